"""`qthink agent --check-sandbox`: what isolation this machine gives the code interpreter, part by part."""

import json
import os
import subprocess
import sys

from qthink.sandbox.cgroup import make_cgroup
from qthink.sandbox.jail import bwrap_path, jail_problem, run_in_jail
from qthink.sandbox.seccomp_filter import DENIED, NOT_IMPLEMENTED

NAMESPACES = ("user", "mnt", "pid", "ipc", "uts", "net", "cgroup")
# Runs inside a probe jail: what it sees of itself, as JSON.
_PROBE = """
import json, os, socket
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
ns = {n: os.readlink("/proc/self/ns/" + n) for n in %r}
print(json.dumps({"ns": ns, "seccomp": status["Seccomp"].strip(), "cap_eff": status["CapEff"].strip(),
                  "uid": os.getuid(), "interfaces": [n for _, n in socket.if_nameindex()],
                  "writable_root": os.access("/usr", os.W_OK),
                  "writable_proc": os.access("/proc/sys/kernel/core_pattern", os.W_OK)}))
"""


def check() -> dict:
    """Each isolation feature and whether this machine gives it."""
    problem = jail_problem()
    report: dict = {"bwrap": bwrap_version(), "jail": problem is None, "problem": problem}
    if problem is None:
        probe = run_in_jail([sys.executable, "-I", "-c", _PROBE % (NAMESPACES,)], timeout=30)
        seen = json.loads(probe.stdout)
        for name in NAMESPACES:
            report[f"{name} namespace"] = seen["ns"][name] != os.readlink(f"/proc/self/ns/{name}")
        report["seccomp filter"] = seen["seccomp"] == "2"
        report["no capabilities"] = int(seen["cap_eff"], 16) == 0
        report["no network interfaces but loopback"] = seen["interfaces"] in ([], ["lo"])
        report["read-only root"] = not seen["writable_root"]
        report["read-only /proc"] = not seen["writable_proc"]
    report["rlimits (address space, file size, open files, CPU time)"] = True
    # The kernel exempts processes of host root from RLIMIT_NPROC.
    root = "no (run as root: the kernel exempts root's processes; the cgroup caps them)"
    report["rlimit on processes enforced"] = os.geteuid() != 0 or root
    cgroup = make_cgroup(64, 256 << 20)
    report["cgroup (tasks and memory cap)"] = cgroup is not None and f"v{cgroup.version}"
    if cgroup is not None:
        cgroup.remove()
    return report


def print_report(report: dict) -> int:
    """Print the report; exit status 0 when the code interpreter can run jailed here."""
    print(f"bubblewrap: {report['bwrap']}")
    for key, value in report.items():
        if key in ("bwrap", "jail", "problem"):
            continue
        print(f"{key}: {'yes' if value is True else value or 'no'}")
    if report["jail"]:
        denied = ", ".join(DENIED)
        print(f"seccomp denies: {denied}; {', '.join(NOT_IMPLEMENTED)} (ENOSYS); clone with namespace flags;")
        print("setuid/setgid modes in chmod/open/creat; TIOCSTI/TIOCLINUX; other ABIs kill the process")
        print("verdict: the code interpreter runs jailed")
        return 0
    print(f"verdict: the code interpreter refuses to start here: {report['problem']}")
    print("(--unsafe-code-interpreter runs it without a jail)")
    return 1


def bwrap_version() -> str:
    path = bwrap_path()
    if path is None:
        return "not installed"
    return subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
