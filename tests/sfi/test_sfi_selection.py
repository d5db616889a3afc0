"""Workload selection metrics, fault detection curves, and both on the real CIFAR-10 LeNet of the mrfi wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from diehardlab.hardening.selection import rank, scores
from diehardlab.hardening.sfi.curve import curves, detection_curve


def test_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])
    p0 = torch.softmax(logits[0].double(), 0)
    el2n = scores(logits, y, "el2n")
    assert el2n[0].item() == pytest.approx(((p0 - torch.tensor([1.0, 0, 0]).double()) ** 2).sum().sqrt().item())
    assert el2n[1].item() == pytest.approx((4 / 9 + 2 / 9) ** 0.5)
    assert scores(logits, y, "deepgini")[1].item() == pytest.approx(2 / 3)
    assert scores(logits, y, "ce")[1].item() == pytest.approx(np.log(3))
    with pytest.raises(Exception, match="label"):
        scores(logits, torch.tensor([0, -1]), "el2n")


def test_rank_hardest_first_ties_in_dataset_order():
    # logits: image 1 and 3 equally wrong (hardest), 0 and 2 equally right; ties keep dataset order
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.tensor([[2.0], [2.0], [2.0], [2.0], [0.0]])
    y = torch.tensor([0, 1, 0, 1, 0])
    order, s, pred = rank(model, x, y, "ce", batch_size=2)
    assert order == [1, 3, 4, 0, 2]
    assert pred.tolist() == [0, 0, 0, 0, 0] and s[1] == s[3] and s[0] == s[2] and s[1] > s[4] > s[0]


def test_detection_curve_counts_worst_so_far():
    o = np.array([[0, 2, 0], [1, 0, 0], [0, 0, 0], [1, 1, 2]], dtype=np.int8)
    c = detection_curve(o)
    assert c.tolist() == [[2, 2, 0], [1, 2, 1], [1, 1, 2]]
    ranked, mean, std = curves(o, orders=5, seed=0, ranking=np.array([2, 1, 0]))
    assert ranked[0].tolist() == [3, 0, 1] and ranked[-1].tolist() == c[-1].tolist()
    assert mean[-1].tolist() == c[-1].tolist() and std[-1].tolist() == [0, 0, 0]


SITE = Path(importlib.util.find_spec("torch").origin).parents[1]
LENET = SITE / "mrfi_dataset" / "lenet_cifar10.pth"
IMAGES = SITE / "foolbox" / "data"


@pytest.fixture(scope="module")
def real_lenet():
    if not LENET.is_file() or not IMAGES.is_dir():
        pytest.skip("the mrfi and foolbox wheels (trained LeNet, CIFAR-10 samples) are not installed")
    import argparse

    from diehardlab.hardening.sfi.sources import load_images, load_target

    args = argparse.Namespace(
        ckpt=None,
        model=None,
        factory="diehardlab.hardening.sfi.zoo:LeNet5",
        weights=LENET,
        seed=0,
        image_dir=IMAGES,
        image_glob="cifar10_*.png",
        mean="0.5",
        std="0.5",
        selection=None,
        images=None,
        data_dir=None,
    )
    target = load_target(args)
    return target.model, load_images(args, target)


def test_real_lenet_selection_and_sfi(real_lenet, tmp_path):
    from diehardlab.hardening.sfi.engine import Injector
    from diehardlab.hardening.sfi.faultlist import draw
    from diehardlab.hardening.sfi.plan import make_plan

    model, images = real_lenet
    assert images.x.shape == (20, 3, 32, 32) and images.y.tolist()[:3] == [3, 8, 8]  # labels from file names
    order, _, pred = rank(model, images.x, images.y, "el2n")
    wrong = {i for i in range(20) if pred[i] != images.y[i]}
    assert 0 < len(wrong) < 10  # a real trained model: most right, some wrong
    assert set(order[: len(wrong)]) == wrong  # the misclassified images are the hardest by EL2N here
    faults = draw(make_plan(model, "network", error=0.05, fault_model="bitflip"), seed=0)
    out = Injector(model, images, batch_size=20).run(faults)
    assert out.shape == (len(faults), 20)
    worst = out.max(axis=1)
    assert (worst == 2).any() and (worst == 0).any() and (worst == 1).any()
