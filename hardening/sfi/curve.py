"""Fault detection curves (DEAR-CNN): faults by their worst outcome over the first k images, k = 1..N.

The run's images are in ranked order (``diehard sfi run --selection``); the ranked curve is compared with the
mean (and standard deviation) over random orders of the same images. A fault counts at its most severe outcome
over the images seen so far, so every curve ends at the same point (all images used).

DEAR-CNN's pre-plateau cutoff (Bellarmino et al., DDECS 2025): stop adding images where the curve of critical
faults flattens, i.e. where its derivative falls below a threshold (5e-5 in the paper). Here the curve is
normalised as the quantity a campaign estimates, the critical-fault rate R(k) = C(k) / F (C(k) critical faults
found with the first k images, F the run's faults), and its derivative per added image is the forward
difference over a window of w images, D(k) = (R(k + w) - R(k)) / w. The cutoff is the first k with
D(k) < threshold: the next w images would add fewer than threshold x F critical faults each. With the
network-wise sample of a ResNet-20 (F = 16,625) a threshold of 5e-5 is 0.83 faults per image: the curve has
flattened when an added image no longer finds one new critical fault. ``scale="critical"`` divides by the
critical faults found with all images instead of F (the share of the final count).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from diehardlab.hardening.sfi.engine import NON_CRITICAL, SDC1

from diehardlab.errors import ConfigError, DataError
from diehardlab.outfiles import check_out_file, write_atomic, write_figure, write_text_atomic

PLATEAU_THRESHOLD = 5e-5  # the paper's
PLATEAU_SCALES = ("faults", "critical")


def detection_curve(outcomes: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """[k, 3]: faults whose worst outcome over the first k+1 images is masked / non-critical / critical."""
    o = outcomes if order is None else outcomes[:, order]
    running = np.maximum.accumulate(o.astype(np.int8), axis=1)  # worst so far, per fault
    crit = (running == SDC1).sum(axis=0)
    noncrit = (running == NON_CRITICAL).sum(axis=0)
    masked = o.shape[0] - crit - noncrit
    return np.stack([masked, noncrit, crit], axis=1)


def curves(
    outcomes: np.ndarray, orders: int = 5, seed: int = 0, ranking: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranked curve (columns in ``ranking`` order, default as stored), mean and std over random orders.

    The random orders depend only on the seed and the number of images, so rankings of the same run are
    compared with the same random baseline. ``ranking`` may name a subset of the images (a central-mode
    window): the ranked curve then has one row per image it names.
    """
    rand = random_curves(outcomes, orders, seed)
    return detection_curve(outcomes, ranking), rand.mean(axis=0), rand.std(axis=0)


def random_curves(outcomes: np.ndarray, orders: int = 5, seed: int = 0) -> np.ndarray:
    """[orders, k, 3]: the detection curve of each seeded random order of the images."""
    rng = np.random.default_rng(seed)
    n = outcomes.shape[1]
    return np.stack([detection_curve(outcomes, rng.permutation(n)) for _ in range(orders)])


# -- the pre-plateau cutoff -----------------------------------------------------------------------------------


def check_plateau_options(threshold: float, window: int, scale: str = "faults") -> None:
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"--plateau-threshold {threshold}: must be a finite number above 0 (the paper's is 5e-5)")
    if window < 1:
        raise ConfigError(f"--plateau-window {window}: must be 1 or more images")
    if scale not in PLATEAU_SCALES:
        raise ConfigError(f"--plateau-scale {scale!r}: choose one of {', '.join(PLATEAU_SCALES)}")


def derivative(critical: np.ndarray, scale: float, window: int = 1) -> np.ndarray:
    """D[k-1] = (C(k + w) - C(k)) / (w scale) for k = 1..len - w images: the normalised curve's slope per image.

    ``critical[k-1]`` is C(k), the critical faults found with the first k images.
    """
    c = np.asarray(critical, dtype=np.float64)
    if window >= c.size or scale <= 0:
        return np.empty(0)
    return (c[window:] - c[:-window]) / (window * scale)


def plateau_cutoff(
    critical: np.ndarray, scale: float, threshold: float = PLATEAU_THRESHOLD, window: int = 1
) -> int | None:
    """The images needed: the first k with D(k) < threshold (``derivative``), or None when it never falls below."""
    d = derivative(critical, scale, window)
    below = np.flatnonzero(d < threshold)
    return int(below[0]) + 1 if below.size else None


def fi_time(images_needed: int, images: int, faults: int, seconds_per_inference: float | None) -> dict:
    """FI time of a campaign on ``images_needed`` of ``images`` images: each fault runs once per image, so the
    time is faults x images x the seconds of one (fault, image) inference, and 1 - needed/images is saved."""
    out = {
        "images_needed": images_needed,
        "share_of_images": images_needed / images,
        "fi_time_saved_share": 1 - images_needed / images,
        "fi_seconds_all_images": None,
        "fi_seconds_needed": None,
        "fi_seconds_saved": None,
    }
    if seconds_per_inference is not None:
        full = seconds_per_inference * faults * images
        need = seconds_per_inference * faults * images_needed
        out.update(fi_seconds_all_images=full, fi_seconds_needed=need, fi_seconds_saved=full - need)
    return out


def seconds_per_inference(summary: dict, faults: int, images: int) -> float | None:
    """One (fault, image) inference's share of the run's measured time (``summary.json``), or None."""
    secs = summary.get("seconds_this_call")
    ran = faults - int(summary.get("resumed_from") or 0)
    if not isinstance(secs, (int, float)) or not math.isfinite(secs) or secs <= 0 or ran <= 0 or images <= 0:
        return None
    return float(secs) / (ran * images)


def plateau(critical: np.ndarray, all_critical: float, faults: int, images: int, threshold: float, window: int,
            scale: str, spi: float | None) -> dict:  # fmt: skip
    """The cutoff of one curve (C(k), k = 1..len) and what stopping there keeps and saves."""
    norm = float(faults) if scale == "faults" else float(all_critical)
    k = plateau_cutoff(critical, norm, threshold, window)
    reached = k is not None
    k = k if reached else len(critical)  # no plateau: every image the curve has is needed
    found = float(critical[k - 1])
    return {
        "plateau_reached": reached,
        **fi_time(k, images, faults, spi),
        "critical_found": found,
        "critical_all_images": float(all_critical),
        "critical_coverage": found / all_critical if all_critical else None,
    }


# -- the command's work ---------------------------------------------------------------------------------------


def _read_scores(path: Path) -> dict[str, float]:
    """image -> score of a 'diehard select' ranking (empty when it has no score column)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for line, r in enumerate(rows, start=2):
        if "score" not in r:
            return {}
        try:
            out[r["image"]] = float(r["score"])
        except (TypeError, ValueError):
            raise DataError(f"--selection: {path}: line {line}: score {r['score']!r} is not a number") from None
    return out


def curve_from_run(
    run_dir: Path,
    orders: int,
    seed: int,
    out: Path,
    selection: Path | None = None,
    threshold: float = PLATEAU_THRESHOLD,
    window: int = 1,
    scale: str = "faults",
) -> dict:
    check_plateau_options(threshold, window, scale)
    if orders < 1:
        raise ConfigError(f"--orders {orders}: must be 1 or more random orders")
    csv_path, png_path, json_path = (out.with_suffix(s) for s in (".csv", ".png", ".json"))
    from diehardlab.hardening.sfi.compare import read_run_folder

    meta, outcomes, run_summary = read_run_folder(Path(run_dir), "--run")
    n_f, n = outcomes.shape
    if window >= n:
        raise ConfigError(f"--plateau-window {window}: the run has {n} images; the window must be below that")
    check_out_file(csv_path, "--out")
    ranking = None
    ids = meta.get("image_ids", [])
    if selection is not None:
        # rank the run's images by another ranking: the same outcomes, another order of the columns
        from diehardlab.hardening.sfi.sources import read_selection

        pos = {iid: i for i, iid in enumerate(ids)}
        ranked_ids = [i for i in read_selection(selection) if i in pos]
        if not ranked_ids:
            raise DataError(f"--selection: {selection} ranks none of the {n} images of the run in {run_dir}")
        if len(set(ranked_ids)) != len(ranked_ids):
            raise DataError(f"--selection: {selection} ranks an image twice")
        ranking = np.array([pos[i] for i in ranked_ids])
    ranked, mean, std = curves(outcomes, orders, seed, ranking)
    m = ranked.shape[0]  # images of the ranking: n, or fewer for a window
    all_crit = float(mean[-1, 2])  # every order ends with all images: the critical faults of the whole run
    norm = float(n_f) if scale == "faults" else all_crit
    d_ranked = derivative(ranked[:, 2], norm, window)
    d_mean = derivative(mean[:, 2], norm, window)
    spi = seconds_per_inference(run_summary, n_f, n)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    "images",
                    "ranked_masked",
                    "ranked_non_critical",
                    "ranked_critical",
                    "random_mean_masked",
                    "random_mean_non_critical",
                    "random_mean_critical",
                    "random_std_critical",
                    "ranked_derivative",
                    "random_mean_derivative",
                ]
            )
            for k in range(n):
                r = ranked[k].tolist() if k < m else ["", "", ""]
                dr = f"{d_ranked[k]:.6g}" if k < d_ranked.size else ""
                dm = f"{d_mean[k]:.6g}" if k < d_mean.size else ""
                w.writerow([k + 1, *r, *(f"{v:.3f}" for v in mean[k]), f"{std[k, 2]:.3f}", dr, dm])

    cut = {
        "threshold": threshold,
        "window": window,
        "scale": scale,
        "derivative": "(C(k+w) - C(k)) / (w * "
        + ("F), F the run's faults" if scale == "faults" else "C(N)), C(N) the critical faults with all images")
        + "; the cutoff is the first k where it is below the threshold",
        "seconds_per_inference": spi,
        "ranked": plateau(ranked[:, 2], all_crit, n_f, n, threshold, window, scale, spi),
        "random_mean": plateau(mean[:, 2], all_crit, n_f, n, threshold, window, scale, spi),
    }
    # each random order's own cutoff: the mean curve is smoother than any one order, so its cutoff is not theirs
    per_order = [
        plateau(r[:, 2], all_crit, n_f, n, threshold, window, scale, spi) for r in random_curves(outcomes, orders, seed)
    ]
    need = np.array([p["images_needed"] for p in per_order], dtype=float)
    cut["random_orders"] = {
        "images_needed": [int(v) for v in need],
        "images_needed_mean": float(need.mean()),
        "images_needed_std": float(need.std()),
        "critical_coverage_mean": float(np.mean([p["critical_coverage"] or 0.0 for p in per_order])),
        "plateau_reached": sum(p["plateau_reached"] for p in per_order),
    }
    marks = sorted({k for k in (1, 2, 3, 5, 10, 20, 50, 100, m) if k <= m})
    summary = {
        "faults": int(n_f),
        "images": int(n),
        "ranked_images": int(m),
        "critical_at": {
            str(k): {
                "ranked": int(ranked[k - 1, 2]),
                "random_mean": round(float(mean[k - 1, 2]), 2),
                "random_std": round(float(std[k - 1, 2]), 2),
            }
            for k in marks
        },
        "area_ratio_critical": round(float(ranked[:, 2].sum() / max(mean[:m, 2].sum(), 1e-9)), 4),
        "plateau": cut,
    }
    if selection is not None:
        sc = _read_scores(selection)
        if sc and ranking is not None:
            # does a harder image (higher score) make more faults critical? per image, over the ranked images
            per_image = (outcomes[:, ranking] == SDC1).sum(axis=0)
            from diehardlab.hardening.selection import spearman

            rho = spearman(np.array([sc[ids[i]] for i in ranking]), per_image)
            summary["spearman_score_vs_critical_per_image"] = None if math.isnan(rho) else round(rho, 6)
    doc = {
        **summary,
        "inputs": {
            "run": str(run_dir),
            "selection": str(selection) if selection else None,
            "orders": orders,
            "seed": seed,
            "model": meta.get("model"),
            "faults_sha256": (meta.get("fingerprint") or {}).get("faults_sha256"),
            "images_sha256": (meta.get("fingerprint") or {}).get("images_sha256"),
        },
        "versions": {"numpy": np.__version__, **(meta.get("versions") or {})},
    }
    write_atomic(csv_path, write_csv, "--out")
    png = _plot(ranked, mean, std, orders, selection, outcomes.shape[0], meta.get("model", run_dir.name), cut, png_path)
    write_text_atomic(json_path, json.dumps(doc, indent=1) + "\n", "--out")
    return {"csv": csv_path, "png": png, "json": json_path, "summary": summary}


def _plot(ranked, mean, std, orders, selection, faults, model, cut, png_path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    m, n = ranked.shape[0], mean.shape[0]
    label = f"ranked by {selection.stem}" if selection is not None else "ranked (run order)"
    # one panel per outcome: critical faults are few and would be flattened next to non-critical ones
    fig, axes = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for ax, col, name, color in ((axes[0], 2, "critical (SDC-1)", "C3"), (axes[1], 1, "non-critical", "C1")):
        ax.plot(np.arange(1, m + 1), ranked[:, col], "-o", ms=3, color=color, label=label)
        x = np.arange(1, n + 1)
        ax.plot(x, mean[:, col], "--", color="k", label=f"mean of {orders} random orders")
        ax.fill_between(x, mean[:, col] - std[:, col], mean[:, col] + std[:, col], color="k", alpha=0.12)
        ax.set_ylabel(f"{name} faults")
    for key, color, style in (("ranked", "C3", ":"), ("random_mean", "k", ":")):
        c = cut[key]
        if c["plateau_reached"]:
            axes[0].axvline(c["images_needed"], color=color, ls=style, lw=1,
                            label=f"plateau ({key.replace('_', ' ')}): {c['images_needed']} images")  # fmt: skip
    for ax in axes:
        ax.legend(fontsize=7, loc="lower right")
    axes[1].set_xlabel("images used")
    axes[0].set_title(f"fault detection curve: {faults} faults, {model}")
    fig.tight_layout()
    return write_figure(png_path, fig, "--out")
