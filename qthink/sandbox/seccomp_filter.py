"""The code interpreter jail's seccomp filter, compiled to BPF with libseccomp (loaded through ctypes).

A denied call fails with EPERM (or ENOSYS for `clone3`, so that the C library falls back
to `clone`, whose flags a filter can read); every other call is allowed. libseccomp
resolves names for the running architecture and makes the filter refuse calls made
through another ABI (x32, 32-bit), which would otherwise slip past a list of numbers.
"""

import ctypes
import ctypes.util
import errno
import functools
import os
import struct
import tempfile

# Kernel-wide state, other processes, kernel attack surface, and namespaces/mounts
# (the jail's own are set up before the filter applies). `symlink` is denied because a
# link left in the working directory points wherever the jail wants once the host follows it.
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "name_to_handle_at",
    "open_by_handle_at",
    "fanotify_init",
    "quotactl",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "symlink",
    "symlinkat",
    "mknod",
    "mknodat",
)
# Calls whose arguments a filter cannot read (a struct in memory): ENOSYS, and the C library
# falls back to the older call, whose arguments it can.
NOT_IMPLEMENTED = ("clone3", "openat2", "fchmodat2")
_NEW_SYSCALL_NUMBERS = {"fchmodat2": 452, "openat2": 437, "clone3": 435}  # one table on every architecture
# clone() flags that make namespaces; unshare/setns are denied outright above.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # push input into a terminal
# A setuid or setgid file left in the working dir would run as the host user for anyone who can reach it.
SET_ID_BITS = (0o4000, 0o2000)
MODE_ARGUMENT = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "open": 2, "openat": 3, "creat": 1}
AF_UNIX = 1

_SCMP_ACT_ALLOW = 0x7FFF0000
_RET_KILL_THREAD, _RET_KILL_PROCESS = 0x00000000, 0x80000000
_BPF_RET_K = 0x06
_SCMP_CMP_EQ, _SCMP_CMP_MASKED_EQ = 4, 7


def kill_process_not_thread(program: bytes) -> bytes:
    """Turn libseccomp's answer to a call through another ABI (x32 numbers, 32-bit `int 0x80`),
    killing the calling thread, into killing the whole process: a kernel missing one thread
    would hang instead of dying and being restarted. The filter's own rules never kill."""
    code = bytearray(program)
    for at in range(0, len(code), 8):
        op, _, _, k = struct.unpack_from("=HBBI", code, at)
        if op == _BPF_RET_K and k == _RET_KILL_THREAD:
            struct.pack_into("=I", code, at + 4, _RET_KILL_PROCESS)
    return bytes(code)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(RuntimeError):
    """libseccomp is not installed, or refused to build the filter."""


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(
            f"libseccomp is not installed ({exc}): apt-get install libseccomp2"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _add(lib: ctypes.CDLL, ctx: int, action: int, name: str, *conditions: tuple[int, int, int, int]) -> None:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:  # an older libseccomp, or a call this architecture does not have (iopl on arm64)
        number = _NEW_SYSCALL_NUMBERS.get(name, -1)
    if number < 0:
        return
    array = (_ArgCmp * max(1, len(conditions)))(*[_ArgCmp(*c) for c in conditions])
    rc = lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array)
    if rc < 0:
        raise SeccompUnavailable(f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")


def compile_filter(deny_unix_sockets: bool = False) -> bytes:
    """The filter as a BPF program, ready for `bwrap --seccomp FD`. With `deny_unix_sockets`
    (for a jail that shares the host's network namespace, whose abstract Unix sockets it would
    otherwise reach) no AF_UNIX socket can be made; socketpair() still works."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        eperm = _errno_action(errno.EPERM)
        for name in DENIED:
            _add(lib, ctx, eperm, name)
        for name in NOT_IMPLEMENTED:
            _add(lib, ctx, _errno_action(errno.ENOSYS), name)
        for name, arg in MODE_ARGUMENT.items():
            for bit in SET_ID_BITS:
                _add(lib, ctx, eperm, name, (arg, _SCMP_CMP_MASKED_EQ, bit, bit))
        if deny_unix_sockets:
            _add(lib, ctx, eperm, "socket", (0, _SCMP_CMP_EQ, AF_UNIX, 0))
        for flag in CLONE_NAMESPACE_FLAGS:
            _add(lib, ctx, eperm, "clone", (0, _SCMP_CMP_MASKED_EQ, flag, flag))
        for request in (TIOCSTI, TIOCLINUX):
            _add(lib, ctx, eperm, "ioctl", (1, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
        with tempfile.TemporaryFile() as out:
            rc = lib.seccomp_export_bpf(ctx, out.fileno())
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            out.seek(0)
            return kill_process_not_thread(out.read())
    finally:
        lib.seccomp_release(ctx)
