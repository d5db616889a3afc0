"""Campaigns on disk: interruption and resume, fault-list reuse, the CLI with a real checkpoint, Ray."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from diehardlab.hardening.sfi.engine import Images
from diehardlab.hardening.sfi.faultlist import draw
from diehardlab.hardening.sfi.plan import injectable_layers, make_plan
from diehardlab.hardening.sfi.runner import run_campaign

from diehardlab.cli import main
from diehardlab.errors import ConfigError
from tests.sfi.conftest import trained_digits_smallnet


class Result:
    def __init__(self, returncode: int, out: str, err: str):
        self.returncode, self.stdout, self.stderr = returncode, out, err


@pytest.fixture
def run_cli(capsys):
    """``diehard ARGS`` in this process (the subprocess path is covered by test_sfi_plan)."""

    def run(*args: str) -> Result:
        code = main(list(args))
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    return run


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _same_outcomes(a, b) -> None:
    np.testing.assert_array_equal(np.load(a / "outcomes.npy"), np.load(b / "outcomes.npy"))


def _campaign(model, x, y, out, faults, **kw):
    imgs = Images(x, y, [str(i) for i in range(len(y))])
    return run_campaign(model, imgs, faults, out, injectable_layers(model), 2.58, {"seed": 1}, "h", **kw)


def test_resume_after_interrupt_gives_the_uninterrupted_result(tiny_resnet, tiny_images, tmp_path):
    x, y = tiny_images
    faults = draw(make_plan(tiny_resnet, "network", error=0.1, fault_model="bitflip"), seed=5)
    assert len(faults) > 100
    full = _campaign(tiny_resnet, x, y, tmp_path / "full", faults, chunk=16)

    def interrupt(k):
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _campaign(tiny_resnet, x, y, tmp_path / "cut", faults, chunk=16, on_chunk=interrupt)
    done = np.load(tmp_path / "cut" / "done.npy")
    assert done.sum() == 48 and not done.all()  # three chunks were saved before the interruption
    with pytest.raises(ConfigError, match="--resume"):
        _campaign(tiny_resnet, x, y, tmp_path / "cut", faults, chunk=16)
    with pytest.raises(ConfigError, match="faults_sha256"):
        _campaign(tiny_resnet, x, y, tmp_path / "cut", faults[:-1], chunk=16, resume=True)
    resumed = _campaign(tiny_resnet, x, y, tmp_path / "cut", faults, chunk=16, resume=True)
    assert resumed["resumed_from"] == 48
    np.testing.assert_array_equal(
        np.load(tmp_path / "cut" / "outcomes.npy"), np.load(tmp_path / "full" / "outcomes.npy")
    )
    for name in ("per_fault.csv", "per_layer_bit.csv", "per_layer.csv"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "full" / name).read_text()
    assert {k: full[k] for k in ("masked", "non_critical", "sdc1")} == {
        k: resumed[k] for k in ("masked", "non_critical", "sdc1")
    }


def test_tables_count_and_margin(tiny_resnet, tiny_images, tmp_path):
    x, y = tiny_images
    plan = make_plan(tiny_resnet, "data-unaware", error=0.3, fault_model="stuck-at")
    faults = draw(plan, seed=2)
    s = _campaign(tiny_resnet, x, y, tmp_path / "r", faults)
    rows = _rows(tmp_path / "r" / "per_layer_bit.csv")
    strata = {(st.layer, st.bit): st for st in plan.strata}
    assert sum(int(r["faults"]) for r in rows) == len(faults) == s["faults"]
    for r in rows:
        st = strata[r["layer"], int(r["bit"])]
        assert int(r["population"]) == st.population and int(r["faults"]) == st.n
        assert int(r["masked"]) + int(r["non_critical"]) + int(r["sdc1"]) == st.n
        # the margin achieved at p = 0.5 is the requested one (up to sizes rounded to the nearest integer)
        assert 0.25 < float(r["margin_p05"]) <= 0.3 * 1.05
    # stuck-at faults that leave the bit unchanged are masked without running anything
    per_fault = _rows(tmp_path / "r" / "per_fault.csv")
    assert {r["worst"] for r in per_fault} >= {"masked", "sdc-1"}


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    """A real checkpoint folder (digits smallnet), trained for a few steps so outcomes are not trivial."""
    return trained_digits_smallnet(tmp_path_factory.mktemp("ckpt"))[0]


def test_cli_run_select_curve_on_a_checkpoint(digits_ckpt, tmp_path, run_cli):
    sel = tmp_path / "sel.csv"
    r = run_cli("select", str(digits_ckpt), "--metric", "el2n", "--images", "40", "--out", str(sel))
    assert r.returncode == 0, r.stderr
    ranking = _rows(sel)
    assert len(ranking) == 40 and [float(x["score"]) for x in ranking] == sorted(
        (float(x["score"]) for x in ranking), reverse=True
    )
    out = tmp_path / "run"
    args = ["--selection", str(sel), "--images", "12", "--batch-size", "5"]
    r = run_cli("sfi", "run", str(digits_ckpt), "--method", "layer", "--error", "0.2", *args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "faults/s" in r.stdout
    meta = json.loads((out / "run.json").read_text())
    assert meta["image_ids"] == [x["image"] for x in ranking[:12]]
    assert meta["versions"]["torch"] == torch.__version__ and meta["seed"] == 0
    # the saved list replays to the same outcomes
    again = tmp_path / "again"
    r = run_cli("sfi", "run", str(digits_ckpt), "--faults", str(out / "faults.csv"), *args, "--out", str(again))
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out / "outcomes.npy"), np.load(again / "outcomes.npy"))
    r = run_cli("sfi", "curve", "--run", str(out), "--out", str(tmp_path / "curve"))
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "curve.csv")
    assert len(rows) == 12 and (tmp_path / "curve.png").stat().st_size > 1000
    crit = [int(x["ranked_critical"]) for x in rows]
    assert crit == sorted(crit)  # cumulative
    assert float(rows[-1]["random_mean_critical"]) == crit[-1]  # all orders end with every image used
    # an existing run is never overwritten
    r = run_cli("sfi", "run", str(digits_ckpt), "--faults", str(out / "faults.csv"), *args, "--out", str(again))
    assert r.returncode == 2 and "--resume" in r.stderr


def test_cli_errors_name_the_option(digits_ckpt, tmp_path, run_cli):
    r = run_cli("sfi", "run", str(digits_ckpt), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--plan" in r.stderr
    if not torch.cuda.is_available():
        r = run_cli(
            "sfi", "run", str(digits_ckpt), "--method", "layer", "--device", "cuda", "--out", str(tmp_path / "z")
        )
        assert r.returncode == 2 and "--device cuda: CUDA is not available" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text('Injection,Layer,TensorIndex,Bit\n0,stem.conv.weight,"(99, 0, 0, 0)",3\n')
    r = run_cli("sfi", "run", str(digits_ckpt), "--faults", str(bad), "--images", "3", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "outside parameter stem.conv.weight" in r.stderr


def test_ray_engine_matches_in_process(tiny_resnet, tiny_images, tmp_path):
    pytest.importorskip("ray")
    x, y = tiny_images
    faults = draw(make_plan(tiny_resnet, "network", error=0.15, fault_model="bitflip"), seed=9)[:60]
    _campaign(tiny_resnet, x, y, tmp_path / "local", faults)
    s = _campaign(tiny_resnet, x, y, tmp_path / "ray", faults, engine="ray", shards=3)
    assert s["engine"] == "ray"
    np.testing.assert_array_equal(
        np.load(tmp_path / "ray" / "outcomes.npy"), np.load(tmp_path / "local" / "outcomes.npy")
    )


def test_stratified_estimate_weights_by_population():
    from diehardlab.hardening.sfi.faultlist import Fault
    from diehardlab.hardening.sfi.plan import Layer
    from diehardlab.hardening.sfi.results import estimate

    layers = [Layer("a", "conv", ["a.weight"], [(10,)]), Layer("b", "conv", ["b.weight"], [(990,)])]
    # 10 faults from each layer's population (layer method, bit flips): a is all SDC-1, b none
    faults = [Fault(i, "a.weight", (0,), 3, "bitflip", None, "a/all") for i in range(10)]
    faults += [Fault(10 + i, "b.weight", (0,), 3, "bitflip", None, "b/all") for i in range(10)]
    hit = np.array([True] * 10 + [False] * 10)
    e = estimate(faults, hit, layers, 2.58)
    assert e["weighted"] and e["p"] == pytest.approx(10 / 1000)  # not the unweighted 0.5
    assert e["margin"] == 0.0  # both strata have p_h in {0, 1}
    # half of b's faults SDC-1: margin sqrt(sum_h (N_h/N)^2 t^2 p_h (1 - p_h) / n_h (N_h - n_h) / (N_h - 1)) by hand
    hit[10:15] = True
    e = estimate(faults, hit, layers, 2.58)
    w_b, n_b = 990 * 32 / 32_000, 990 * 32
    assert e["p"] == pytest.approx(10 / 1000 + w_b * 0.5)
    assert e["margin"] == pytest.approx(2.58 * w_b * (0.25 / 10 * (n_b - 10) / (n_b - 1)) ** 0.5)
    # per (layer, bit) cell: the margin at the observed proportion, finite-population corrected
    from diehardlab.hardening.sfi.results import cell_rows

    rows = cell_rows(faults, (hit.astype(np.int8) * 2)[:, None], layers, 2.58)
    b = next(r for r in rows if r[0] == "b")
    assert b[3:8] == [990, 10, 5, 0, 5]
    assert float(b[10]) == pytest.approx(2.58 * (0.25 / 10 * 980 / 989) ** 0.5, rel=1e-5)
    plain = estimate([Fault(i, "a.weight", (0,), 3) for i in range(4)], np.array([1, 0, 0, 0], bool), layers, 2.58)
    assert not plain["weighted"] and plain["p"] == 0.25 and plain["margin"] == pytest.approx(2.58 * (0.1875 / 4) ** 0.5)


def test_per_bit_strata_without_faults_count_with_rate_zero():
    """A data-aware plan gives some bits no faults: the estimate keeps their population (at the method's rate 0)."""
    from diehardlab.hardening.sfi.faultlist import Fault
    from diehardlab.hardening.sfi.plan import Layer
    from diehardlab.hardening.sfi.results import estimate

    layers = [Layer("a", "conv", ["a.weight"], [(100,)])]
    # the plan sampled only bits 30 and 29 (10 faults each); bit 30 always SDC-1, bit 29 never
    faults = [Fault(i, "a.weight", (i,), 30, "bitflip", None, "a/30") for i in range(10)]
    faults += [Fault(10 + i, "a.weight", (i,), 29, "bitflip", None, "a/29") for i in range(10)]
    hit = np.array([True] * 10 + [False] * 10)
    assert estimate(faults, hit, layers, 2.58)["p"] == pytest.approx(1 / 2)  # without the plan: the sampled part
    unsampled = {f"a/{b}": 100 for b in range(32) if b not in (29, 30)}
    e = estimate(faults, hit, layers, 2.58, unsampled)
    assert e["p"] == pytest.approx(1 / 32)  # one bit of the layer's 32, not one of the 2 sampled
    assert e["unsampled_share"] == pytest.approx(30 / 32)


def test_activation_campaign_tables(tiny_resnet, tiny_images, tmp_path):
    from diehardlab.hardening.sfi.plan import activation_layers

    x, y = tiny_images
    plan = make_plan(tiny_resnet, "layer", error=0.25, fault_model="bitflip", target="activations", example=x)
    faults = draw(plan, seed=4)
    layers = injectable_layers(tiny_resnet) + activation_layers(tiny_resnet, x[:1])
    imgs = Images(x, y, [str(i) for i in range(len(y))])
    s = run_campaign(tiny_resnet, imgs, faults, tmp_path / "a", layers, 2.58, {}, "h")
    rows = _rows(tmp_path / "a" / "per_layer.csv")
    by_name = {r["layer"]: r for r in rows}
    assert set(by_name) == {st.layer for st in plan.strata} and all(n.endswith(".output") for n in by_name)
    for st in plan.strata:
        assert int(by_name[st.layer]["population"]) == st.population and int(by_name[st.layer]["faults"]) == st.n
    assert s["estimate_sdc1"]["weighted"] and 0 <= s["estimate_sdc1"]["p"] <= 1


@pytest.mark.parametrize("damage", ["outcomes-missing", "done-truncated", "both-missing"])
def test_resume_recovers_a_run_with_damaged_progress_files(tiny_resnet, tiny_images, tmp_path, damage):
    """Issue 18, item 13: run.json with missing or truncated .npy files; --resume recovers what is intact."""
    x, y = tiny_images
    faults = draw(make_plan(tiny_resnet, "network", error=0.15, fault_model="bitflip"), seed=5)
    full = _campaign(tiny_resnet, x, y, tmp_path / "full", faults, chunk=16)

    def interrupt(k):
        if k == 1:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _campaign(tiny_resnet, x, y, cut, faults, chunk=16, on_chunk=interrupt)
    if damage in ("outcomes-missing", "both-missing"):
        (cut / "outcomes.npy").unlink()
    if damage in ("done-truncated", "both-missing"):
        data = (cut / "done.npy").read_bytes()
        (cut / "done.npy").write_bytes(data[: len(data) // 2]) if damage == "done-truncated" else (
            cut / "done.npy"
        ).unlink()
    resumed = _campaign(tiny_resnet, x, y, cut, faults, chunk=16, resume=True)
    # nothing intact is kept from damaged progress: the lost part is recomputed, the result is the same
    assert resumed["resumed_from"] == 0
    np.testing.assert_array_equal(np.load(cut / "outcomes.npy"), np.load(tmp_path / "full" / "outcomes.npy"))
    assert {k: full[k] for k in ("masked", "non_critical", "sdc1")} == {
        k: resumed[k] for k in ("masked", "non_critical", "sdc1")
    }


def test_a_bad_fault_list_leaves_no_run_behind(tiny_resnet, tiny_images, tmp_path):
    """The list is checked against the model before any run file is written, so a corrected list can run in
    the same --out (no 'already holds a run' for a run that never started)."""
    from diehardlab.hardening.sfi.faultlist import Fault

    x, y = tiny_images
    good = draw(make_plan(tiny_resnet, "network", error=0.3, fault_model="bitflip"), seed=1)
    bad = [*good, Fault(len(good), "layer1.conv1.weight", (0, 0, 5, 0), 3)]
    with pytest.raises(ConfigError, match=r"index \(0, 0, 5, 0\) is outside parameter layer1.conv1.weight"):
        _campaign(tiny_resnet, x, y, tmp_path / "r", bad)
    assert not (tmp_path / "r" / "run.json").exists()
    assert _campaign(tiny_resnet, x, y, tmp_path / "r", good)["faults"] == len(good)


def test_cli_run_in_other_number_formats(digits_ckpt, tmp_path, run_cli):
    """--dtype, --quantize int8 (calibrated on the train split), --target scales: recorded, bits in the format."""
    base = ("sfi", "run", str(digits_ckpt), "--images", "4", "--max-faults", "12")
    r = run_cli(
        *base,
        "--dtype",
        "bfloat16",
        "--method",
        "layer",
        "--error",
        "0.3",
        "--target",
        "activations",
        "--out",
        str(tmp_path / "bf16"),
    )
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert run["format"]["format"] == "bfloat16" and run["fingerprint"]["format"]["dtype"] == "bfloat16"
    assert all(int(x["Bit"]) < 16 for x in _rows(tmp_path / "bf16" / "faults.csv"))
    # a 16-bit model is planned in its own bits: data-aware strata are (layer, bit 0..15) with float16's p(i)
    r = run_cli(*base, "--dtype", "float16", "--method", "data-aware", "--error", "0.3", "--out", str(tmp_path / "f16"))
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "f16" / "faults.csv")
    assert all(x["Stratum"] == f"{x['Layer'].removesuffix('.weight')}/{x['Bit']}" and int(x["Bit"]) < 16 for x in rows)
    plan = json.loads((tmp_path / "f16" / "run.json").read_text())["plan"]
    assert {x["width"] for x in plan["layers"]} == {16} and {len(v) for v in plan["p_table"].values()} == {16}
    r = run_cli(
        *base,
        "--quantize",
        "int8",
        "--calibration",
        "32",
        "--method",
        "network",
        "--error",
        "0.2",
        "--out",
        str(tmp_path / "int8"),
    )
    assert r.returncode == 0, r.stderr
    fmt = json.loads((tmp_path / "int8" / "run.json").read_text())["format"]
    assert fmt["format"] == "int8" and fmt["calibration"]["source"] == "digits train split"
    assert fmt["calibration"]["images"] == 32 and "stem.conv" in fmt["layers"]
    assert all(int(x["Bit"]) < 8 for x in _rows(tmp_path / "int8" / "faults.csv"))
    r = run_cli(*base, "--quantize", "int8", "--target", "scales", "--error", "0.2", "--out", str(tmp_path / "sc"))
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "sc" / "faults.csv")
    assert rows and all(x["Layer"].endswith(".weight_scale") for x in rows)
    r = run_cli(*base, "--quantize", "int8", "--dtype", "float16", "--method", "network", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "does not combine with --dtype" in r.stderr
