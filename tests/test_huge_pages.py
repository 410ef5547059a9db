"""Loaded weights move into transparent huge pages, unchanged and still shared where tied."""

from pathlib import Path

import pytest
import torch
from torch import nn

from qthink.model.huge_pages import MIN_BYTES, huge_page_copy, move_to_huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_kb_at(address: int) -> int:
    """AnonHugePages (kB) of the mapping of this process that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return 0


def test_copy_is_equal_and_contiguous():
    x = torch.randn(3 * MIN_BYTES // 4).view(-1, 64)[:, ::2]
    copy = huge_page_copy(x)
    assert torch.equal(copy, x) and copy.is_contiguous()


@pytest.mark.skipif(not THP.is_file() or "[never]" in THP.read_text(), reason="no transparent huge pages")
def test_large_tensors_land_in_huge_pages():
    copy = huge_page_copy(torch.ones(16 << 20, dtype=torch.uint8))
    assert huge_kb_at(copy.data_ptr() + (8 << 20)) >= 2048


def test_model_tensors_move_and_tied_weights_stay_shared():
    model = nn.Sequential(nn.Embedding(8192, 256), nn.Linear(256, 8192, bias=False), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    before = {name: p.clone() for name, p in model.named_parameters()}
    small = model[2].weight.data_ptr()
    move_to_huge_pages(model)
    assert model[1].weight is model[0].weight
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert model[2].weight.data_ptr() == small  # under MIN_BYTES: left where it was
