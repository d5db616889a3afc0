"""Checkpoint folders load with weights_only and rebuild the same model."""

from __future__ import annotations

import pytest
import torch
from diehardlab.hardening.checkpoint import file_sha256, load_last, load_model, save_config, save_model
from diehardlab.hardening.models import ModelConfig, build_model

from diehardlab.errors import DataError


def test_save_and_load_model(tmp_path):
    cfg = ModelConfig(arch="smallnet", activation="relu6", order="act-bn", nan_filter=True, width=8)
    model = build_model(cfg, 1, 10).eval()
    save_config(
        tmp_path,
        {
            "model": cfg.to_dict(),
            "dataset": "digits",
            "in_channels": 1,
            "num_classes": 10,
            "seed": 0,
            "diehardlab_version": "test",
        },
    )
    save_model(tmp_path, model)
    loaded = load_model(tmp_path)
    assert not loaded.model.training
    assert loaded.dataset == "digits" and loaded.num_classes == 10 and loaded.in_channels == 1
    assert loaded.model_hash == file_sha256(tmp_path / "model.pt") and len(loaded.model_hash) == 64
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(loaded.model(x), model(x))
    # Plain tensors only: loads with weights_only.
    torch.load(tmp_path / "model.pt", weights_only=True)


def test_load_model_errors(tmp_path):
    with pytest.raises(DataError, match="not a checkpoint folder"):
        load_model(tmp_path)
    cfg = ModelConfig(arch="smallnet")
    save_config(tmp_path, {"model": cfg.to_dict(), "dataset": "digits", "in_channels": 1, "num_classes": 10})
    with pytest.raises(DataError, match=r"model\.pt"):
        load_model(tmp_path)
    save_model(tmp_path, build_model(ModelConfig(arch="smallnet", width=4), 1, 10))
    with pytest.raises(DataError, match="does not match"):
        load_model(tmp_path)


def test_load_last_errors(tmp_path):
    with pytest.raises(DataError, match="no resume state"):
        load_last(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"last\.pt: not a resume state"):
        load_last(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(DataError, match=r"last\.pt: not a resume state"):
        load_last(tmp_path)
