"""Compile the native CPU kernels once per source, flags and compiler, in a cache shared by every
install, and load them (or report why not)."""

import fcntl
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger("qthink")

KERNEL_DIR = Path(__file__).parent
SOURCES = [
    KERNEL_DIR / name
    for name in (
        "thread_pool.cpp",
        "linear_avx512.cpp",
        "amx_tiles.cpp",
        "linear_bf16_amx.cpp",
        "attention_avx512.cpp",
        "greedy_head_avx512.cpp",
        "norm_avx512.cpp",
        "activation_avx512.cpp",
    )
]
HEADERS = [
    KERNEL_DIR / name
    for name in (
        "thread_pool.h",
        "bf16_vectors.h",
        "lane_sums.h",
        "linear_output.h",
        "amx_tiles.h",
        "linear_bf16_amx.h",
        "kv_cache_format.h",
    )
]
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni")
# AMX instructions run only where the CPU has them (linear_bf16_amx.cpp asks before using them).
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni"]
ISA_FLAGS = [*AVX512_FLAGS, "-mamx-tile", "-mamx-bf16", "-mamx-int8"]
COMPILE_FLAGS = ["-O3", "-march=native", *ISA_FLAGS, "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel needs to know about (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cache_dir() -> Path:
    """QTHINK_KERNEL_CACHE, else $XDG_CACHE_HOME/qthink/kernels (~/.cache by default)."""
    if os.environ.get("QTHINK_KERNEL_CACHE"):
        return Path(os.environ["QTHINK_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qthink" / "kernels"


@functools.cache
def compiler_version() -> str:
    """The first line of `$CXX --version` (torch's extension builder compiles with $CXX or c++)."""
    compiler = os.environ.get("CXX", "c++")
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return f"{compiler}: unavailable"
    return result.stdout.splitlines()[0] if result.stdout else f"{compiler}: unknown"


def build_key(flags: set[str]) -> str:
    """A hash of what the library depends on: the sources' bytes (not where they are installed),
    the compile flags, the compiler, torch and the CPU. Two installs of one source share a build."""
    material = [path.name.encode() + path.read_bytes() for path in [*SOURCES, *HEADERS]]
    material += [" ".join(COMPILE_FLAGS + LINK_FLAGS).encode(), compiler_version().encode()]
    material += [torch.__version__.encode(), " ".join(sorted(flags)).encode()]
    return hashlib.sha256(b"\0".join(material)).hexdigest()[:16]


def library_name(key: str) -> str:
    return f"qthink_kernels_{key}"


def _compile(build_dir: Path, key: str) -> None:
    """Copy the sources into the build folder and compile them there, so the build (and its
    ninja file) names no install path; torch's builder loads the library it made."""
    from torch.utils.cpp_extension import load

    source_dir = build_dir / "src"
    source_dir.mkdir(parents=True, exist_ok=True)
    for path in [*SOURCES, *HEADERS]:
        shutil.copyfile(path, source_dir / path.name)
    log.info("building CPU kernels, once: ~40 s (cached in %s)", build_dir)
    start = time.monotonic()
    load(
        name=library_name(key),
        sources=[str(source_dir / path.name) for path in SOURCES],
        extra_cflags=list(COMPILE_FLAGS),  # the builder appends to the lists it gets
        extra_ldflags=list(LINK_FLAGS),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    log.info("CPU kernels built in %.0f s", time.monotonic() - start)


@functools.cache
def _build_and_load() -> bool:
    flags = cpu_flags()
    if not all(flag in flags for flag in REQUIRED_CPU_FLAGS):
        return False
    key = build_key(flags)
    build_dir = cache_dir() / key
    library = build_dir / f"{library_name(key)}.so"
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        # One process builds; others wait for it here and then load its library.
        with open(build_dir / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if library.is_file():
                torch.ops.load_library(str(library))
            else:
                _compile(build_dir, key)
    except Exception as error:  # any cache, compiler or loader failure means: use torch's kernels
        warnings.warn(
            f"qthink: the AVX-512 kernels could not be built ({error}); using torch's", stacklevel=2
        )
        return False
    # QTHINK_AMX=0: the AVX-512 kernels alone, as on a CPU without AMX (comparisons, benchmarks)
    torch.ops.qthink_kernels.use_amx(os.environ.get("QTHINK_AMX", "1") != "0")
    log.info("CPU kernels ready: %s", library)
    return True


def linear_kernels_available() -> bool:
    """True when the native kernels are loaded and not switched off with QTHINK_KERNELS=0;
    the first call builds them (once per source and compiler) or loads the cached build."""
    return os.environ.get("QTHINK_KERNELS", "1") != "0" and _build_and_load()


def kernel_ops():
    """The loaded kernels' op namespace: linear_bf16, linear_int8 (small M, GEMV), linear_int4
    (any M: GEMV, and a VNNI GEMM for prefill), linear_int8_many / linear_int4_many (several
    matrices that share their input in one call), greedy_head (each row's argmax of a bf16 output
    layer, no logits), gemm_int8 (large M, dequantized tiles through
    torch's GEMM), decode_attention (one query per sequence against the paged bf16, int8 or fp8 KV cache),
    rms_norm (bf16 rows) and set_num_threads / get_num_threads (the kernels' thread count)."""
    return torch.ops.qthink_kernels
