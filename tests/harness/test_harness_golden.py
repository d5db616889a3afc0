"""``diehard golden``: the record, its checks, and the refusal of a non-deterministic device."""

from __future__ import annotations

import hashlib

import diehardlab.harness.cli_golden as golden_cli
import diehardlab.harness.golden as golden_mod
import pytest
import torch
from diehardlab.harness.golden import load_golden, make_golden, save_golden

from diehardlab.errors import ConfigError, DataError


def test_golden_command_writes_a_weights_only_record(ckpt, tmp_path, capsys):
    out = tmp_path / "g.pt"
    assert golden_cli.main([str(ckpt), "--out", str(out), "--samples", "12", "--batch-size", "5", "--seed", "3"]) == 0
    assert "12 images of digits/test" in capsys.readouterr().out
    rec = torch.load(out, weights_only=True)
    assert rec["inputs"].shape == (12, 1, 8, 8) and rec["outputs"].shape == (12, 10)
    assert rec["topk"].shape == (12, 5) and torch.equal(rec["topk"][:, 0], rec["outputs"].argmax(dim=1))
    assert rec["model_hash"] == hashlib.sha256((ckpt / "model.pt").read_bytes()).hexdigest()
    assert rec["batch_size"] == 5 and rec["dataset"] == "digits" and rec["max_run_difference"] == 0.0
    # Seeded: the same images again.
    again = make_golden(ckpt, samples=12, batch_size=5, seed=3)
    assert torch.equal(again["indices"], rec["indices"]) and torch.equal(again["outputs"], rec["outputs"])
    assert load_golden(out)["torch_version"] == str(torch.__version__)


def test_non_deterministic_device_is_refused_with_the_difference(ckpt, monkeypatch):
    # This machine's CPU is deterministic; a device that is not is emulated by noise on the second run.
    calls = []
    real = golden_mod.forward_batches

    def noisy(model, batches):
        outs = real(model, batches)
        calls.append(1)
        return [o + 0.01 for o in outs] if len(calls) > 1 else outs

    monkeypatch.setattr(golden_mod, "forward_batches", noisy)
    with pytest.raises(ConfigError, match=r"not deterministic at --threshold 0.001.*1\.000e-02"):
        make_golden(ckpt, samples=4, batch_size=4)


def test_bad_requests_are_explained(ckpt, tmp_path):
    with pytest.raises(ConfigError, match="has only"):
        make_golden(ckpt, samples=100000)
    with pytest.raises(DataError, match="diehard golden"):
        load_golden(tmp_path / "missing.pt")
    (tmp_path / "x.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="not a golden file"):
        load_golden(tmp_path / "x.pt")
    save_golden({"format": "something-else"}, tmp_path / "y.pt")
    with pytest.raises(DataError, match="not a diehardlab golden"):
        load_golden(tmp_path / "y.pt")
