"""Compile the AVX-512 kernels (linear layers, decode attention) once per machine and load them,
or report why not."""

import functools
import hashlib
import os
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("linear_avx512.cpp", "attention_avx512.cpp")]
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni")
ISA_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni"]
COMPILE_FLAGS = ["-O3", "-march=native", *ISA_FLAGS, "-fopenmp"]


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
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qthink" / "kernels"


def build_key(flags: set[str]) -> str:
    """Same source, torch and CPU give the same build; any change rebuilds."""
    material = b"".join(s.read_bytes() for s in SOURCES)
    material += torch.__version__.encode() + " ".join(sorted(flags)).encode()
    return hashlib.sha256(material).hexdigest()[:16]


@functools.cache
def _build_and_load() -> bool:
    flags = cpu_flags()
    if not all(flag in flags for flag in REQUIRED_CPU_FLAGS):
        return False
    key = build_key(flags)
    build_dir = cache_dir() / key
    try:
        from torch.utils.cpp_extension import load

        build_dir.mkdir(parents=True, exist_ok=True)

        load(
            name=f"qthink_kernels_{key}",
            sources=[str(s) for s in SOURCES],
            extra_cflags=COMPILE_FLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # any cache, compiler or loader failure means: use torch's kernels
        warnings.warn(
            f"qthink: the AVX-512 kernels could not be built ({error}); using torch's", stacklevel=2
        )
        return False
    return True


def linear_kernels_available() -> bool:
    """True when the native kernels are loaded and not switched off with QTHINK_KERNELS=0."""
    return os.environ.get("QTHINK_KERNELS", "1") != "0" and _build_and_load()


def kernel_ops():
    """The loaded kernels' op namespace: linear_bf16, linear_int8, linear_int4 (small M, GEMV),
    gemm_int8, gemm_int4 (large M, dequantized tiles through torch's GEMM) and decode_attention
    (one query per sequence against the paged bf16 KV cache)."""
    return torch.ops.qthink_kernels
