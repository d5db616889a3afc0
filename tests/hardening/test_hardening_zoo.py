"""``diehard harden`` on the benchmark suite's real ResNet-20 (``diehard zoo import``), measured on the 20 real
CIFAR-10 test images of the foolbox wheel: the hardened folder is an ordinary checkpoint (golden, run --once,
evaluate --image-dir, sfi run with the suite's own fault list and numerics, nvbitfi setup), and ``train --from``
a zoo checkpoint keeps the suite's input normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diehardlab.hardening.checkpoint import load_model
from diehardlab.hardening.cli_evaluate import main as evaluate_main
from diehardlab.hardening.evaluate import evaluate_checkpoint
from diehardlab.hardening.faults import FaultSpec
from diehardlab.hardening.harden import main as harden_main
from diehardlab.hardening.rewrite import Recipe, calibrate, harden
from diehardlab.hardening.sfi.sources import image_dir_images
from diehardlab.hardening.zoo import NORMALISATION
from diehardlab.hardening.zoo.cli import import_weights
from torch import fx

from diehardlab.errors import ConfigError, DataError
from tests.conftest import SUITE, _site_packages

MAP = "layer3.*=tf32,*=fp32"  # the arithmetic the suite's published ResNet-20 outcomes were computed in (docs/sfi.md)


def _foolbox() -> Path:
    site = _site_packages()
    folder = site / "foolbox" / "data" if site else None
    if folder is None or not (folder / "cifar10_00_3.png").is_file() or not (SUITE / "ResNet20.th").is_file():
        pytest.skip("needs the foolbox wheel's CIFAR-10 images and tests/data/dnn-benchmarks/ResNet20.th")
    return folder


@pytest.fixture(scope="module")
def suite_r20(tmp_path_factory) -> Path:
    _foolbox()
    out = tmp_path_factory.mktemp("zoo") / "suite-r20"
    import_weights(SUITE / "ResNet20.th", "resnet20", "cifar10", out)
    return out


@pytest.fixture(scope="module")
def bounded(suite_r20, tmp_path_factory) -> Path:
    """bounds-only, calibrated on cifar10_00..09, measured on cifar10_10..19 (as in docs/hardening.md)."""
    out = tmp_path_factory.mktemp("zoo-bounded") / "suite-r20-bounds"
    argv = [str(suite_r20), "--recipe", "bounds-only", "--out", str(out), "--image-dir", str(_foolbox()),
            "--image-glob", "cifar10_*.png", "--calibration-images", "10", "--threads", "1"]  # fmt: skip
    assert harden_main(argv) == 0
    return out


def test_a_zoo_checkpoint_hardens_with_its_own_normalisation(suite_r20, bounded) -> None:
    cfg = json.loads((bounded / "config.json").read_text())
    h = cfg["hardening"]
    assert cfg["model"]["arch"] == "cifar10/resnet20" and cfg["normalisation"]["fixed"] is True
    assert "cifar10_00_3.png .. cifar10_09_1.png" in h["calibration"]["from"]
    assert h["clean"]["measured_on"].startswith("the other 10 files") and h["clean"]["images"] == 10
    # 9 of the other 10 right, before and after (image 12, a 5, is taken for a 4 by the suite's own weights)
    assert h["clean"]["accuracy_before"] == h["clean"]["accuracy_after"] == pytest.approx(0.9)
    assert len(h["bounds"]) == 19 and all(0 < b < 20 for b in h["bounds"].values())

    original, hard = load_model(suite_r20), load_model(bounded)
    assert isinstance(hard.model, fx.GraphModule)
    # the suite's names, so its fault lists and the numerics map by module name apply to the hardened model
    assert hard.model.state_dict().keys() == original.model.state_dict().keys()
    assert {"conv1", "layer3.2.conv2", "linear"} <= dict(hard.model.named_modules()).keys()
    # the images are normalised with the suite's constants (not defaults of 0 and 1)
    imgs = image_dir_images(_foolbox(), "cifar10_1?_*.png", dataset="cifar10", config=hard.config)
    with torch.no_grad():
        assert (hard.model(imgs.x).argmax(1) == imgs.y).sum() == 9


def test_bounds_above_every_golden_activation_keep_the_suites_outputs_on_clean_images(suite_r20) -> None:
    original = load_model(suite_r20).model
    imgs = image_dir_images(_foolbox(), "cifar10_*.png", dataset="cifar10", config=load_model(suite_r20).config)
    h = harden(original, Recipe(name="max", percentile=100.0))
    with torch.no_grad():
        calibrate(h, [imgs.x], len(imgs.x))  # the bound of each activation: its largest value on the 20 images
        assert torch.equal(h.model(imgs.x), original(imgs.x))
        assert not torch.equal(h.model(imgs.x * 4), original(imgs.x * 4))  # and they bite beyond


def test_the_zoo_hardened_checkpoint_runs_in_golden_run_evaluate_sfi_and_nvbitfi(bounded, tmp_path, capsys) -> None:
    from diehardlab.hardening.sfi.cli import main as sfi_main
    from diehardlab.harness.cli_golden import main as golden_main
    from diehardlab.harness.cli_run import main as run_main
    from diehardlab.harness.nvbitfi import main as nvbitfi_main

    fb = _foolbox()
    golden = tmp_path / "golden.pt"
    assert golden_main([str(bounded), "--out", str(golden), "--data-dir", str(fb), "--samples", "8", "--batch-size",
                        "8", "--device", "cpu", "--numerics", MAP]) == 0  # fmt: skip
    out_bin = tmp_path / "out.bin"
    assert run_main([str(bounded), "--golden", str(golden), "--log-dir", str(tmp_path / "logs"), "--once",
                     "--output", str(out_bin), "--ecc", "off", "--device", "cpu", "--hostname", "h"]) == 0  # fmt: skip
    assert "result: MASKED errors:0" in capsys.readouterr().out and out_bin.stat().st_size == 8 * 10 * 4
    assert "hardening:bounds-only" in next((tmp_path / "logs").glob("*.log")).read_text().splitlines()[0]

    res = evaluate_checkpoint(bounded, FaultSpec(kind="block"), campaigns=2, device="cpu", image_dir=fb,
                              image_glob="cifar10_1?_*.png", batch_size=10)  # fmt: skip
    conf = res["configuration"]
    assert conf["images"] == 10 and conf["split"] == "image-dir" and conf["image_dir"]["files"][0] == "cifar10_10_0.png"
    assert res["clean_accuracy"] == pytest.approx(0.9) and conf["hardening"]["name"] == "bounds-only"

    # The suite's own fault list (its rows address the original's module names) in the suite's arithmetic.
    sfi_out = tmp_path / "sfi"
    assert sfi_main(["run", str(bounded), "--faults", str(SUITE / "ResNet20_FL.csv"), "--max-faults", "12",
                     "--image-dir", str(fb), "--image-glob", "cifar10_1?_*.png", "--numerics", MAP,
                     "--out", str(sfi_out), "--device", "cpu", "--threads", "1"]) == 0  # fmt: skip
    run = json.loads((sfi_out / "run.json").read_text())
    assert run["image_ids"][0] == "cifar10_10_0.png" and len(run["image_ids"]) == 10
    assert run["numerics"]["policy"] == MAP
    assert json.loads((sfi_out / "summary.json").read_text())["suite_table"]["golden_accuracy"] == pytest.approx(0.9)

    # NVBitFI's workload: run.sh runs 'diehard run --once' on the hardened folder (one real run here).
    app = tmp_path / "nvbitfi-app"
    assert nvbitfi_main(["setup", str(bounded), "--golden", str(golden), "--out", str(app), "--device", "cpu",
                         "--threads", "1", "--no-verify"]) == 0  # fmt: skip
    assert "result: MASKED" in (app / "golden_stdout.txt").read_text()
    assert (app / "golden_output.bin").read_bytes() == out_bin.read_bytes()


def test_evaluate_reads_a_labelled_image_folder(suite_r20, tmp_path, capsys) -> None:
    fb = _foolbox()
    first = tmp_path / "first.json"
    common = ["--fault-model", "block", "--campaigns", "2", "--batch-size", "20", "--device", "cpu"]
    assert evaluate_main([str(suite_r20), "--image-dir", str(fb), "--image-glob", "cifar10_*.png", *common,
                          "--json", str(first)]) == 0  # fmt: skip
    assert f"{fb}/cifar10_*.png, 20 images" in capsys.readouterr().out
    res = json.loads(first.read_text())
    # the same 20 images, in the same order, as the labelled folder read as the dataset's test split
    same = evaluate_checkpoint(suite_r20, FaultSpec(kind="block"), campaigns=2, data_dir=str(fb), batch_size=20,
                               device="cpu")  # fmt: skip
    assert res["clean_accuracy"] == same["clean_accuracy"] == pytest.approx(0.95)
    assert res["campaigns"] == same["campaigns"]
    again = tmp_path / "again.json"
    assert evaluate_main([str(suite_r20), "--reproduce", str(first), "--batch-size", "20", "--device", "cpu",
                          "--json", str(again)]) == 0  # fmt: skip
    assert json.loads(again.read_text())["campaigns"] == res["campaigns"]

    unlabelled = tmp_path / "imgs"
    unlabelled.mkdir()
    (unlabelled / "frame.png").write_bytes((fb / "cifar10_00_3.png").read_bytes())
    with pytest.raises(ConfigError, match=r"frame\.png has no label of the model's 10 classes"):
        evaluate_checkpoint(suite_r20, FaultSpec(kind="block"), campaigns=1, device="cpu", image_dir=unlabelled)
    with pytest.raises(DataError, match=r"--image-dir: no file matches '\*\.jpg'"):
        evaluate_main([str(suite_r20), "--image-dir", str(unlabelled), "--image-glob", "*.jpg"])
    with pytest.raises(ConfigError, match="--image-dir replaces the dataset"):
        evaluate_main([str(suite_r20), "--image-dir", str(fb), "--split", "val"])


def test_train_from_a_zoo_checkpoint_keeps_the_suites_normalisation(suite_r20, tmp_path, capsys) -> None:
    """The weights were trained on inputs normalised with the suite's constants: so is their fine-tuning, even
    with a recipe that says normalise_with = "train-split" (and so is every later command, through config.json)."""
    from diehardlab.hardening.cli_train import main as train_main

    from tests.hardening.test_hardening_data import _write_cifar

    _write_cifar(tmp_path / "data" / "cifar-10-batches-py", 8)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('name = "r"\ndataset = "cifar10"\nbatch_size = 8\nnormalise_with = "train-split"\n')
    out = tmp_path / "ft"
    argv = ["--from", str(suite_r20), "--fine-tune", "--epochs", "2", "--stop-after", "1", "--train-limit", "16",
            "--data-dir", str(tmp_path / "data"), "--config", str(recipe), "--out", str(out), "--no-progress",
            "--device", "cpu", "--threads", "1"]  # fmt: skip
    assert train_main(argv) == 0
    assert "not as" in capsys.readouterr().out  # says the recipe's normalise_with is not used
    suite = {"mean": list(NORMALISATION["cifar10"][0]), "std": list(NORMALISATION["cifar10"][1]), "fixed": True}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["normalisation"] == suite and cfg["normalise_with"] == "suite"
    assert cfg["model"]["arch"] == "cifar10/resnet20"  # the checkpoint's network, not the recipe's [model]
    assert train_main(["--resume", "--out", str(out), "--no-progress", "--threads", "1"]) == 0  # resumes so too
    assert json.loads((out / "config.json").read_text())["normalisation"] == suite
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert type(load_model(out).model).__name__ == "CifarResNet"


def _plain_outcomes(model: torch.nn.Module, x: torch.Tensor, faults: list) -> torch.Tensor:
    """The obvious way: flip the weight bit in place, a full forward pass of the model as loaded, restore."""
    from diehardlab.hardening.sfi.engine import classify

    params = dict(model.named_parameters())
    rows = []
    with torch.no_grad():
        golden = model(x)
        for f in faults:
            w = params[f.tensor].data.view(torch.int32)
            before = w[f.index].item()
            w[f.index] = before ^ (1 << f.bit) if f.bit < 31 else before ^ -(1 << 31)
            rows.append(classify(model(x), golden))
            w[f.index] = before
    return torch.stack(rows)


def test_sfi_traces_the_hardened_graph_with_its_clamps_and_nan_filters_and_stays_exact(suite_r20, bounded) -> None:
    import torch.nn.functional as F
    from diehardlab.hardening.sfi.engine import SDC1, Images, Injector
    from diehardlab.hardening.sfi.faultlist import Fault
    from diehardlab.hardening.sfi.graph import CachedGraph

    hard, original = load_model(bounded), load_model(suite_r20)
    bounds = json.loads((bounded / "config.json").read_text())["hardening"]["bounds"]
    # The graph the cached engine recomputes (a re-trace of the hardened GraphModule) holds every clamp with its
    # saved bound, each read only by a NaN filter, and a NaN filter in front of the classifier.
    g = CachedGraph(hard.model)
    clamps = [n for n in g.nodes if n.op == "call_function" and n.target is F.hardtanh]
    filters = [n for n in g.nodes if n.op == "call_function" and n.target is torch.nan_to_num]
    assert len(clamps) == 19 and len(filters) == 20
    assert sorted(n.kwargs["max_val"] for n in clamps) == sorted(bounds.values())
    assert all(n.kwargs["min_val"] == 0.0 for n in clamps)
    assert all([u.target for u in n.users] == [torch.nan_to_num] for n in clamps)
    (fc,) = (n for n in g.nodes if n.op == "call_module" and n.target == "linear")
    assert fc.args[0].target is torch.nan_to_num

    # Exact: the cached engine's outcomes are those of a full forward pass of the loaded checkpoint, with faults in
    # the exponent's top bit (inf/huge weights: the clamps and filters act) and elsewhere, in all three stages.
    imgs = image_dir_images(_foolbox(), "cifar10_1?_*.png", dataset="cifar10", config=hard.config)
    where = [("conv1.weight", (3, 1, 1, 1)), ("layer1.0.conv2.weight", (5, 7, 0, 2)),
             ("layer2.1.conv1.weight", (9, 20, 1, 1)), ("layer3.2.conv2.weight", (40, 33, 2, 1)),
             ("linear.weight", (4, 17))]  # fmt: skip
    faults = [Fault(i, t, idx, b) for i, ((t, idx), b) in enumerate((w, b) for w in where for b in (30, 23))]
    out = {}
    for name, m in (("hardened", hard.model), ("original", original.model)):
        got = Injector(m, Images(imgs.x, imgs.y, imgs.ids), batch_size=4).run(faults)
        assert torch.equal(torch.as_tensor(got), _plain_outcomes(m, imgs.x, faults)), name
        out[name] = torch.as_tensor(got)
    # the bounds and filters bite: the stem's bit-30 flip (weight x 2^128) is SDC-1 on all 10 images of the original
    # and is clamped away on most of the hardened one's (here 1 of 10); the linear layer's is SDC-1 in both.
    assert (out["original"][0] == SDC1).sum() == 10 and (out["hardened"][0] == SDC1).sum() <= 3
