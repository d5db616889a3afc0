"""Fixtures of the hardening tests: tiny, fast training configs on the digits dataset."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diehardlab.hardening.faults import FaultSpec
from diehardlab.hardening.models import ModelConfig
from diehardlab.hardening.train import TrainConfig

# The test machines are small and shared: one intra-op thread avoids spin-waiting on busy cores.
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    """A digits config that trains an epoch in well under a second on one core."""
    return TrainConfig(
        name="tiny",
        dataset="digits",
        train_limit=320,
        epochs=3,
        batch_size=64,
        lr=0.1,
        crop_pad=1,
        eval_batch_size=512,
        device="cpu",
        model=ModelConfig(arch="smallnet", width=8, activation="relu6", order="act-bn", nan_filter=True),
        faults=FaultSpec(kind="block", p=0.75),
        fault_aware=True,
        bn_recalibrate=128,
    )


@pytest.fixture
def tiny_baseline(tiny_cfg) -> TrainConfig:
    return replace(
        tiny_cfg, name="tiny_baseline", fault_aware=False, bn_recalibrate=0, model=ModelConfig(arch="smallnet", width=8)
    )
