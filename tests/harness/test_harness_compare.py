"""The on-device comparison: threshold, NaN/Inf, critical vs tolerable, several batches."""

from __future__ import annotations

import math

import pytest
import torch
from diehardlab.harness.compare import GoldenCompare


def _cmp(golden: torch.Tensor, labels=None, threshold=1e-3, batch=None):
    batch = batch or golden.shape[0]
    gs = list(torch.split(golden, batch))
    top1 = [g.argmax(dim=1) for g in gs]
    lab = list(torch.split(labels if labels is not None else torch.zeros(golden.shape[0], dtype=torch.long), batch))
    return GoldenCompare(gs, top1, lab, threshold)


@pytest.fixture
def golden():
    torch.manual_seed(0)
    return torch.randn(6, 10)


def test_identical_and_within_threshold_match(golden):
    c = _cmp(golden)
    assert c.matches([golden.clone()])
    assert c.matches([golden + 0.999e-3])
    assert not c.matches([golden + 1.01e-3])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_mismatches(golden, bad):
    # A NaN compares False with everything: a comparison written with ">" would let it through.
    out = golden.clone()
    out[3, 7] = bad
    c = _cmp(golden)
    assert not c.matches([out])
    mm = c.explain([out])
    assert mm.errors == 1
    (d,) = mm.images
    assert (d.batch, d.img, d.critical) == (0, 3, True)
    assert d.elements[0][0] == 7


def test_critical_when_top1_changes_else_tolerable(golden):
    out = golden.clone()
    g0 = int(golden[0].argmax())
    other = (g0 + 1) % 10
    out[0, other] = golden[0].max() + 5.0  # new top-1: critical
    low = int(golden[1].argmin())
    out[1, low] -= 1.0  # the smallest logit gets smaller: tolerable
    labels = torch.arange(6)
    mm = _cmp(golden, labels).explain([out])
    assert mm.errors == 2 and mm.critical == 1 and mm.tolerable == 1
    crit = next(d for d in mm.images if d.critical)
    assert (crit.img, crit.golden_label, crit.output_label, crit.ground_truth) == (0, g0, other, 0)


def test_several_batches_report_batch_and_image(golden):
    out = golden.clone()
    out[4, 2] += 1.0  # batch 2 (size 2), image 0
    c = _cmp(golden, batch=2)
    outs = list(torch.split(out, 2))
    assert not c.matches(outs)
    mm = c.explain(outs)
    assert [(d.batch, d.img) for d in mm.images] == [(2, 0)]
    assert c.matches(list(torch.split(golden, 2)))
