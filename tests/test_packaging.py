"""The built wheel holds every file of the package that git tracks: a non-editable install
(`pip install qthink`) must find its templates, kernels' sources, viewer files and data."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_tracked_package_file(tmp_path):
    files = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "README.md", "LICENSE", "qthink"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    source = tmp_path / "src"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("qthink-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in files if f.startswith("qthink/") and f not in packed]
    assert not missing, missing
