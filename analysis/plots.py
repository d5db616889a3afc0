"""The report's figures, as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

SIM = "SIMULATED BEAM"


def _png(fig, simulated: bool = False) -> bytes:
    if simulated:
        fig.text(0.01, 0.01, SIM, ha="left", va="bottom", color="#b00", fontsize=9, alpha=0.8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bars(ax, df: pd.DataFrame, value: str, lo: str, hi: str, classes: list[str]) -> None:
    groups = list(dict.fromkeys(df["group"]))
    width = 0.8 / max(1, len(classes))
    x = np.arange(len(groups))
    for i, cls in enumerate(classes):
        sub = df[df["error_class"] == cls].set_index("group").reindex(groups)
        v = pd.to_numeric(sub[value], errors="coerce").to_numpy(float)
        lo_v = pd.to_numeric(sub[lo], errors="coerce").to_numpy(float)
        hi_v = pd.to_numeric(sub[hi], errors="coerce").to_numpy(float)
        # zero-event groups: draw the upper limit as an open marker, never drop them
        shown = np.where(np.isfinite(v) & (v > 0), v, np.nan)
        err = np.vstack([np.clip(shown - lo_v, 0, None), np.clip(hi_v - shown, 0, None)])
        pos = x + (i - (len(classes) - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(shown), width, label=cls, alpha=0.85)
        ax.errorbar(pos, shown, yerr=np.nan_to_num(err), fmt="none", ecolor="k", capsize=3, lw=1)
        limits = np.where(~np.isfinite(shown) & np.isfinite(hi_v), hi_v, np.nan)
        ax.plot(pos, limits, "v", color="k", mfc="none", ms=7, label=None if i else "upper limit (0 events)")
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=8)


def fit_plot(groups: pd.DataFrame, simulated: bool, classes: list[str], title: str = "FIT per error class") -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    _bars(ax, groups, "fit", "fit_lo", "fit_hi", classes)
    ax.set_yscale("log")
    ax.set_ylabel("FIT (failures in 10^9 h at 13 n/(cm^2 h))")
    ax.set_title(f"{title} ({groups['ci_method'].iloc[0]} interval)")
    return _png(fig, simulated)


def _ratio_plot(groups: pd.DataFrame, simulated: bool, classes: list[str], col: str, ylabel: str, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    _bars(ax, groups, col, f"{col}_lo", f"{col}_hi", classes)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig, simulated)


def fig7_plot(groups: pd.DataFrame, simulated: bool, classes: list[str]) -> bytes:
    """Fig. 7 of the DieHardNet paper: each class's FIT over the panel reference's critical-SDC FIT."""
    return _ratio_plot(groups, simulated, classes, "fig7_norm", "FIT / DieHardNet critical-SDC FIT",
                       "Normalised to the DieHardNet critical-SDC FIT (exact ratio intervals)")  # fmt: skip


def normalised_plot(groups: pd.DataFrame, simulated: bool, classes: list[str]) -> bytes:
    return _ratio_plot(groups, simulated, classes, "norm", "cross section / reference (a.u.)",
                       "Normalised cross sections (exact rate-ratio intervals)")  # fmt: skip


def cumulative_plot(events: pd.DataFrame, simulated: bool) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    for (group, cls), sub in events.groupby(["group", "error_class"]):
        f = np.sort(sub["cum_fluence_n_cm2"].to_numpy(float))
        ax.step(np.r_[0.0, f], np.arange(len(f) + 1), where="post", marker=".", ms=4, label=f"{group} {cls}")
    ax.set_xlabel("cumulative fluence of the campaign (n/cm^2)")
    ax.set_ylabel("events")
    ax.set_title("Cumulative events against fluence")
    if len(events):
        ax.legend(fontsize=7)
    return _png(fig, simulated)


def pvf_plot(pvf: pd.DataFrame) -> bytes:
    """Fig. 6 style: PVF of SDC split into critical and tolerable, per (app, group, model)."""
    df = pvf.copy()
    df["key"] = df["app"] + " " + df["group"] + " " + df["model"]
    keys = list(dict.fromkeys(df["key"]))
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(keys))
    piv = df.pivot_table(index="key", columns="outcome", values="pvf", aggfunc="first").reindex(keys)
    bottom = np.zeros(len(keys))
    parts = ["sdc_critical", "sdc_tolerable", "sdc_unjoined"] if "sdc_critical" in piv else ["sdc"]
    for part in [*parts, "due", "potential_due"]:
        if part in piv:
            v = piv[part].fillna(0).to_numpy(float)
            ax.bar(x, v, 0.6, bottom=bottom, label=part)
            bottom += v
    ax.set_xticks(x, keys, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("PVF")
    ax.set_title("NVBitFI PVF: critical and tolerable SDC, DUE")
    ax.legend(fontsize=8)
    return _png(fig)


def regret_plot(evals: pd.DataFrame) -> bytes:
    """Fig. 5 style: mean regret (with its std) per model configuration, and critical/tolerable rates."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(evals))
    ax1.bar(x, evals["regret_mean"], 0.6, yerr=evals["regret_std"].fillna(0), capsize=3, color="#4472c4")
    ax1.set_xticks(x, evals["label"], rotation=20, ha="right", fontsize=8)
    ax1.set_ylabel("regret (clean - faulty accuracy)")
    ax1.set_title("Regret under injected faults")
    w = 0.38
    ax2.bar(x - w / 2, evals["critical_rate"], w, label="critical")
    ax2.bar(x + w / 2, evals["tolerable_rate"], w, label="tolerable")
    ax2.set_xticks(x, evals["label"], rotation=20, ha="right", fontsize=8)
    ax2.set_ylabel("rate per faulty inference")
    ax2.legend(fontsize=8)
    if not math.isnan(float(evals["regret_mean"].max() or 0)):
        ax1.set_ylim(bottom=0)
    return _png(fig)
