"""Native CPU kernels (AVX-512 BF16), built on first use, with torch as the fallback."""

from qthink.kernels.build import kernel_ops, linear_kernels_available

__all__ = ["kernel_ops", "linear_kernels_available"]
