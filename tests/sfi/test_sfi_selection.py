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


# -- DEAR-CNN's rules: the central-mode window, Spearman, the pre-plateau cutoff, the time saved --------------


def test_kde_mode_and_window_by_hand():
    from diehardlab.hardening.selection import central_window, kde_mode, silverman_bandwidth

    s = np.array([0.0, 0.75, 1.0, 1.25, 2.0])  # symmetric about 1: the KDE peaks there
    # sd = sqrt(2.625/4) = 0.8101, IQR = 1.25 - 0.75 = 0.5 -> 0.5/1.34 = 0.3731; h = 0.9 * 0.3731 * 5^-0.2
    assert silverman_bandwidth(s) == pytest.approx(0.9 * (0.5 / 1.34) * 5**-0.2)
    m = kde_mode(s)
    assert m.method == "kde" and m.mode == pytest.approx(1.0, abs=1e-9) and m.bandwidth == silverman_bandwidth(s)
    keep, _ = central_window(s, 0.3)
    assert keep.tolist() == [False, True, True, True, False]
    assert central_window(s, 0.2)[0].tolist() == [False, False, True, False, False]
    # three easy images and one outlier: the mode is the easy images' score, the outlier is left out
    keep, m = central_window(np.array([0.0, 0.0, 0.0, 5.0]), 0.5)
    assert m.mode == pytest.approx(0.0, abs=1e-12) and keep.tolist() == [True, True, True, False]
    # all scores equal: the mode is that score, bandwidth 0
    assert kde_mode(np.array([0.4, 0.4])).mode == 0.4 and kde_mode(np.array([0.4, 0.4])).bandwidth == 0.0


def test_kde_mode_is_the_maximum_of_scipys_gaussian_kde():
    stats = pytest.importorskip("scipy.stats")
    from diehardlab.hardening.selection import kde_mode

    rng = np.random.default_rng(3)
    # a skewed, bimodal score distribution like EL2N's: many easy images, a smaller hump of wrong ones
    s = np.concatenate([rng.gamma(2.0, 0.05, 400), rng.normal(1.2, 0.1, 60)])
    m = kde_mode(s)
    kde = stats.gaussian_kde(s, bw_method=m.bandwidth / s.std(ddof=1))  # scipy's factor multiplies the sd
    xs = np.linspace(m.mode - 0.005, m.mode + 0.005, 2001)
    assert abs(xs[np.argmax(kde(xs))] - m.mode) < 1e-5  # our refined mode is scipy's density maximum
    assert kde(np.array([m.mode]))[0] >= kde(np.linspace(s.min(), s.max(), 2000)).max()


def test_histogram_mode_by_hand():
    from diehardlab.hardening.selection import central_window, histogram_mode

    s = np.array([0.0, 1.0, 2.0, 2.5, 2.6, 2.7, 10.0])
    # quartiles 1.5 and 2.65 -> IQR 1.15; Freedman-Diaconis width 2 * 1.15 * 7^(-1/3) = 1.2025, ceil(10/1.2025) = 9
    # bins; bin 2, [2.405, 3.607), holds 2.5, 2.6, 2.7: the tallest, its centre 2.5 widths from 0
    w = 2 * 1.15 * 7 ** (-1 / 3)
    m = histogram_mode(s)
    assert m.bins == 9 and m.bandwidth == pytest.approx(w) and m.mode == pytest.approx(2.5 * w)
    keep, _ = central_window(s, 0.6, "histogram")  # 2.5 * w = 3.006: 2.5, 2.6, 2.7 are within 0.6
    assert keep.tolist() == [False, False, False, True, True, True, False]
    # IQR 0 (most scores equal): Sturges' ceil(log2 5) + 1 = 4 bins over [1, 4], width 0.75; [1, 1.75) holds four
    m = histogram_mode(np.array([1.0, 1.0, 1.0, 1.0, 4.0]))
    assert m.bins == 4 and m.bandwidth == 0.75 and m.mode == 1.375
    # a confident model: IQR 1e-12 and one outlier at 1 would ask for 1e12 bins; capped at 10,000 of 1e-4
    m = histogram_mode(np.array([0.0, 0.0, 1e-12, 1e-12, 1e-12, 1.0]))
    assert m.bins == 10_000 and m.bandwidth == pytest.approx(1e-4) and m.mode == pytest.approx(0.5e-4)


def test_window_refuses_bad_epsilon_and_an_empty_window():
    from diehardlab.hardening.selection import central_window

    from diehardlab.errors import ConfigError, DataError

    s = np.array([0.0, 1.0, 3.0])
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--epsilon"):
            central_window(s, eps)
    with pytest.raises(ConfigError, match="no image scores within"):
        central_window(np.array([0.0, 1.0]), 1e-9)  # two equal humps: the mode lies between the images
    with pytest.raises(DataError, match="NaN or infinite"):
        central_window(np.array([0.0, float("nan")]), 0.1)


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    from diehardlab.hardening.selection import rankdata, spearman

    rng = np.random.default_rng(0)
    for n in (5, 20, 500):
        a = rng.integers(0, 5, n).astype(float)  # many ties
        b = a + rng.normal(0, 2, n)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        np.testing.assert_allclose(rankdata(a), stats.rankdata(a))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0 and spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no rank order


def test_metric_correlations():
    from diehardlab.hardening.selection import metric_correlations, scores, spearman

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 10, generator=g) * 3, torch.randint(0, 10, (50,), generator=g)
    c = metric_correlations(logits, y)
    assert set(c) == {"el2n~deepgini", "el2n~ce", "deepgini~ce"}
    assert c["el2n~ce"] == pytest.approx(spearman(scores(logits, y, "el2n"), scores(logits, y, "ce")), abs=1e-6)
    assert 0.5 < c["el2n~ce"] < 1  # both grow as p_y shrinks; EL2N also sees how the rest is spread
    two = torch.randn(30, 2, generator=g)
    assert metric_correlations(two, torch.randint(0, 2, (30,), generator=g))["el2n~ce"] == 1.0  # both monotone in p_y
    assert metric_correlations(logits, torch.full((50,), -1)) == {}  # no labels: deepgini alone


def test_plateau_cutoff_by_hand():
    from diehardlab.hardening.sfi.curve import derivative, plateau, plateau_cutoff

    c = np.array([10, 30, 40, 41, 41, 42])  # critical faults with the first 1..6 images, F = 1000 faults
    np.testing.assert_allclose(derivative(c, 1000), [0.02, 0.01, 0.001, 0.0, 0.001])
    assert plateau_cutoff(c, 1000, 5e-3) == 3  # D(3) = 1/1000 is the first below 5e-3
    np.testing.assert_allclose(derivative(c, 1000, 2), [0.015, 0.0055, 0.0005, 0.0005])
    assert plateau_cutoff(c, 1000, 6e-3, window=2) == 2
    assert plateau_cutoff(c, 42, 0.01) == 4  # scaled by the final count: D = [20, 10, 1, 0, 1] / 42
    assert plateau_cutoff(np.array([1, 2, 3]), 10, 0.05) is None  # one per image = 0.1 > 0.05 throughout
    p = plateau(c.astype(float), 42.0, 1000, 6, 5e-3, 1, "faults", 0.5)
    assert p["plateau_reached"] and p["images_needed"] == 3 and p["critical_found"] == 40.0
    assert p["critical_coverage"] == pytest.approx(40 / 42) and p["fi_time_saved_share"] == pytest.approx(0.5)
    assert p["fi_seconds_all_images"] == 3000.0 and p["fi_seconds_saved"] == 1500.0
    p = plateau(np.array([1.0, 2.0, 3.0]), 3.0, 10, 3, 0.05, 1, "faults", None)
    assert not p["plateau_reached"] and p["images_needed"] == 3 and p["fi_seconds_saved"] is None


def test_fi_time_saved_arithmetic():
    from diehardlab.hardening.sfi.curve import fi_time, seconds_per_inference

    # 60 of 100 faults ran in this call (40 came from a resumed run) on 12 images in 6 s: 6 / 720 s each
    spi = seconds_per_inference({"seconds_this_call": 6.0, "resumed_from": 40}, 100, 12)
    assert spi == pytest.approx(1 / 120)
    t = fi_time(3, 12, 100, spi)
    assert t["share_of_images"] == 0.25 and t["fi_time_saved_share"] == 0.75
    assert t["fi_seconds_all_images"] == pytest.approx(10.0) and t["fi_seconds_needed"] == pytest.approx(2.5)
    assert t["fi_seconds_saved"] == pytest.approx(7.5)
    assert seconds_per_inference({"seconds_this_call": 0.0}, 100, 12) is None  # nothing ran: no rate
    assert seconds_per_inference({}, 100, 12) is None


def test_real_lenet_curve_cutoff_and_window(real_lenet, tmp_path):
    """The trained LeNet's real outcomes, as 'sfi run' stores them: the cutoff, a window's curve, the JSON."""
    import json

    from diehardlab.hardening.selection import central_window
    from diehardlab.hardening.sfi.curve import curve_from_run
    from diehardlab.hardening.sfi.engine import Injector
    from diehardlab.hardening.sfi.faultlist import draw
    from diehardlab.hardening.sfi.plan import make_plan

    model, images = real_lenet
    order, s, pred = rank(model, images.x, images.y, "el2n")
    faults = draw(make_plan(model, "network", error=0.05, fault_model="bitflip"), seed=1)
    out = Injector(model, images, batch_size=20).run(faults)
    run = tmp_path / "run"
    run.mkdir()
    np.save(run / "outcomes.npy", out)
    np.save(run / "done.npy", np.ones(len(faults), dtype=bool))
    (run / "run.json").write_text(json.dumps({"image_ids": images.ids, "model": "lenet"}))
    (run / "summary.json").write_text(json.dumps({"seconds_this_call": 2.0, "resumed_from": 0}))
    keep, mode = central_window(s.numpy(), 0.05)
    window = [i for i in order if keep[i]]
    sel = tmp_path / "window.csv"
    sel.write_text("rank,image,label,predicted,score,metric\n" + "".join(
        f"{r},{images.ids[i]},{int(images.y[i])},{int(pred[i])},{float(s[i]):.9g},el2n\n" for r, i in enumerate(window)
    ))  # fmt: skip
    res = curve_from_run(run, 5, 0, tmp_path / "c", sel, threshold=5e-5)
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["ranked_images"] == len(window) < 20 and doc["images"] == 20
    crit = (out == 2).cumsum(axis=1).clip(max=1).sum(axis=0)  # critical faults found with the first k images
    crit_window = (out[:, window] == 2).cumsum(axis=1).clip(max=1).sum(axis=0)
    cut = doc["plateau"]["ranked"]
    k = next((j + 1 for j in range(len(window) - 1) if (crit_window[j + 1] - crit_window[j]) / len(faults) < 5e-5),
             None)  # fmt: skip
    assert cut["plateau_reached"] == (k is not None) and cut["images_needed"] == (k or len(window))
    assert cut["critical_found"] == crit_window[cut["images_needed"] - 1] and cut["critical_all_images"] == crit[-1]
    assert cut["fi_seconds_all_images"] == pytest.approx(2.0)  # the run's own time, all 20 images
    from diehardlab.hardening.sfi.curve import plateau_cutoff, random_curves

    each = [plateau_cutoff(r[:, 2], len(faults), 5e-5) or 20 for r in random_curves(out, 5, 0)]
    assert doc["plateau"]["random_orders"]["images_needed"] == each
    with open(res["csv"], newline="") as fh:
        rows = list(__import__("csv").DictReader(fh))
    assert len(rows) == 20 and rows[len(window)]["ranked_critical"] == ""  # beyond the window: no ranked point
    assert -1 <= doc["spearman_score_vs_critical_per_image"] <= 1 and res["png"].stat().st_size > 1000
    assert mode.mode < float(s.max())
