"""Our outcomes against published ones, fault by fault, and the arithmetic the published ones were computed in.

A published row (the benchmark suite's 8-column form) counts the images of the whole test set whose outcome was
masked, non-critical or SDC-1 with that fault. Ours may cover fewer images (a subset of the same test set), so a
fault is *consistent* when no outcome we saw is one the publication never saw: published masked = 0 means none
of our images masked, published critical = 0 means none of ours critical, and so on (a published all-masked row
needs every one of our images masked). When both cover the same number of images the counts must be equal.

Inferring the numerics: a flip of a low mantissa bit of a weight (bits 0..11 by default) changes the weight by
less than TF32 keeps, so in a layer computed in TF32 it is rounded away and the fault is masked on every image;
in FP32 it changes the scores. Per layer, the share of such flips published as masked on every image says which
arithmetic the layer ran in (TF32 when more than half), from the published list alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from diehardlab.hardening.numerics import NumericsPolicy, policy_from_map
from diehardlab.hardening.sfi.faultlist import Fault, FaultList, layer_column, read_list

from diehardlab.errors import ConfigError, DataError

OUTCOMES = ("masked", "non_critical", "critical")
LOW_BITS = range(0, 12)


@dataclass
class Side:
    """One side of a comparison: faults, per-fault counts [masked, non_critical, critical], images per fault."""

    faults: list[Fault]
    counts: np.ndarray  # (faults, 3)
    images: int
    source: str
    run: dict = field(default_factory=dict)  # run.json of a diehardlab run folder
    summary: dict = field(default_factory=dict)


def _key(f: Fault) -> tuple:
    return (f.tensor, tuple(f.index), f.bit, f.model)


def read_run_folder(path: Path, what: str) -> tuple[dict, np.ndarray, dict]:
    """A finished ``diehard sfi run`` folder: its run.json, outcomes (faults x images) and summary.json ({} when
    absent or damaged: it is derived). Anything missing, damaged or unfinished is one DataError naming ``what``."""
    run_json, outcomes = path / "run.json", path / "outcomes.npy"
    if not run_json.is_file() or not outcomes.is_file():
        raise DataError(f"{what}: {path} is not a 'diehard sfi run' output folder (no run.json / outcomes.npy)")
    try:
        run = json.loads(run_json.read_text())
        out = np.load(outcomes, allow_pickle=False)
        done = np.load(path / "done.npy", allow_pickle=False)
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{what}: {path}: unreadable run files ({exc})") from None
    if not isinstance(run, dict) or out.ndim != 2 or done.shape != (out.shape[0],):
        raise DataError(f"{what}: {path}: run.json, outcomes.npy and done.npy disagree; the run folder is damaged")
    if not done.all():
        raise DataError(
            f"{what}: {path}: the run is not finished ({int(done.sum())} of {len(done)} faults); "
            "finish it with 'diehard sfi run ... --resume' first"
        )
    summary = {}
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            summary = {}
    return run, out, summary


def load_side(path: Path, what: str) -> Side:
    """A ``diehard sfi run`` folder or a results CSV in the suite's 8-column form."""
    path = Path(path)
    if path.is_dir():
        run, out, summary = read_run_folder(path, what)
        fl = read_list(path / "faults.csv")
        if out.shape[0] != len(fl.faults):
            raise DataError(f"{what}: {path}: outcomes and fault list disagree; the run folder is damaged")
        counts = np.stack([(out == k).sum(axis=1) for k in range(3)], axis=1)
        return Side(fl.faults, counts, int(out.shape[1]), str(path), run, summary)
    fl = read_list(path)
    if fl.counts is None:
        raise DataError(
            f"{what}: {path} has no outcome columns (n_injections, masked, non_critical, critical); a results list "
            "in the suite's 8-column form or a 'diehard sfi run' folder is needed"
        )
    totals = fl.counts[:, 1:].sum(axis=1)
    return Side(fl.faults, fl.counts[:, 1:], int(totals[0]) if len(totals) else 0, str(path))


@dataclass
class Comparison:
    ours: Side
    published: Side
    matched: np.ndarray  # our fault index -> published row
    consistent: np.ndarray  # bool per matched fault
    reasons: list[str]

    @property
    def n(self) -> int:
        return len(self.matched)


def _reason(o: np.ndarray, p: np.ndarray, n_ours: int, n_pub: int) -> str:
    parts = []
    for k, name in enumerate(OUTCOMES):
        if p[k] == 0 and o[k] > 0:
            parts.append(f"{o[k]}/{n_ours} of ours {name}, published none of {n_pub}")
    if not parts and n_ours == n_pub:
        parts.append(f"ours {tuple(int(v) for v in o)} vs published {tuple(int(v) for v in p)}")
    return "; ".join(parts)


def compare(ours: Side, published: Side) -> Comparison:
    index = {_key(f): i for i, f in enumerate(published.faults)}
    missing = [f for f in ours.faults if _key(f) not in index]
    if missing:
        f = missing[0]
        raise ConfigError(
            f"{len(missing)} of our {len(ours.faults)} faults are not in {published.source} (first: "
            f"{layer_column(f)} {f.index} bit {f.bit}); compare a run of that list ('diehard sfi run --faults')"
        )
    matched = np.array([index[_key(f)] for f in ours.faults], dtype=np.int64)
    pub = published.counts[matched]
    o = ours.counts
    ok = np.ones(len(matched), dtype=bool)
    for k in range(3):
        ok &= ~((pub[:, k] == 0) & (o[:, k] > 0))
    if ours.images == published.images:
        ok &= (pub == o).all(axis=1)
    reasons = ["" if ok[i] else _reason(o[i], pub[i], ours.images, published.images) for i in range(len(matched))]
    return Comparison(ours, published, matched, ok, reasons)


def result_table(side: Side) -> dict:
    """The suite's table (Tables VI-IX): inferences, Masked/Non-critical/SDC-1 % over every (fault, image)."""
    n = int(side.counts.sum())
    table = {"inferences": n}
    for k, name in enumerate(("masked_pct", "non_critical_pct", "sdc1_pct")):
        table[name] = 100.0 * float(side.counts[:, k].sum()) / n if n else float("nan")
    st = side.summary.get("suite_table", {})
    table["golden_accuracy"] = st.get("golden_accuracy")
    table["faulty_accuracy"] = st.get("faulty_accuracy")
    return table


@dataclass
class LayerEvidence:
    layer: str
    low_bit_faults: int
    all_masked: int

    @property
    def share(self) -> float:
        return self.all_masked / self.low_bit_faults if self.low_bit_faults else float("nan")

    @property
    def arithmetic(self) -> str | None:
        if not self.low_bit_faults:
            return None
        return "tf32" if self.share > 0.5 else "fp32"


def infer_numerics(published: FaultList | Side, low_bits=LOW_BITS) -> tuple[NumericsPolicy, list[LayerEvidence]]:
    """Per layer, the share of low-mantissa flips published as masked on every image; the policy it implies."""
    faults = published.faults
    counts = published.counts
    if counts.shape[1] == 4:  # a FaultList: n_injections first
        counts = counts[:, 1:]
    totals = counts.sum(axis=1)
    low = set(low_bits)
    evidence: dict[str, LayerEvidence] = {}
    for f, c, total in zip(faults, counts, totals):
        if f.is_activation or not f.tensor.endswith(".weight"):
            continue
        ev = evidence.setdefault(f.module, LayerEvidence(f.module, 0, 0))
        if f.bit in low:
            ev.low_bit_faults += 1
            ev.all_masked += int(c[0] == total)
    layer_map = {e.layer: e.arithmetic for e in evidence.values() if e.arithmetic}
    source = published.source if isinstance(published, Side) else str(published.path)
    policy = policy_from_map(layer_map, f"inferred from {source}")
    return policy, list(evidence.values())
