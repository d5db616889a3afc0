"""The same code on a CUDA device (skipped where there is none): masks, seeding, AMP training, evaluation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diehardlab.hardening.evaluate import evaluate_checkpoint
from diehardlab.hardening.faults import KINDS, FaultInjector, FaultSpec, corrupt
from diehardlab.hardening.models import ModelConfig, build_model
from diehardlab.hardening.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_on_cuda_matches_shapes_and_is_seeded(kind):
    out = torch.randn(32, 8, 10, 10, device="cuda")
    a, ma = corrupt(out, FaultSpec(kind=kind), torch.Generator().manual_seed(3))
    b, mb = corrupt(out, FaultSpec(kind=kind), torch.Generator().manual_seed(3))
    assert a.device.type == "cuda" and ma.device.type == "cuda"
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert (ma.flatten(1).sum(1) >= 1).all()
    _, mc = corrupt(out.cpu(), FaultSpec(kind=kind), torch.Generator().manual_seed(3))
    assert mc.shape == ma.shape


def test_injector_on_cuda_with_bf16_autocast():
    model = build_model(ModelConfig(arch="resnet20", activation="relu6", nan_filter=True), 3, 10).cuda().eval()
    x = torch.randn(16, 3, 32, 32, device="cuda")
    with (
        FaultInjector(model, FaultSpec(kind="block", p=1.0), torch.Generator().manual_seed(0)),
        torch.autocast("cuda", dtype=torch.bfloat16),
    ):
        y = model(x)
    assert torch.isfinite(y).all()


def test_training_and_evaluation_on_cuda(tmp_path, tiny_cfg):
    cfg = replace(tiny_cfg, device="cuda", epochs=2)
    summary = train(cfg, tmp_path / "gpu", log=lambda *a, **k: None)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    res = evaluate_checkpoint(tmp_path / "gpu", FaultSpec(kind="block"), campaigns=2, limit=200, device="cuda")
    again = evaluate_checkpoint(tmp_path / "gpu", FaultSpec(kind="block"), campaigns=2, limit=200, device="cuda")
    assert res["campaigns"] == again["campaigns"]
    assert res["configuration"]["device"].startswith("cuda")
