"""The fault list: drawn from a plan with a seed, saved as an SFIadvancedmodels-compatible CSV, reusable.

CSV columns: ``Injection,Layer,TensorIndex,Bit`` (as SFIadvancedmodels writes them, e.g.
``0,layer1.0.conv1.weight,"(3, 0, 2, 1)",30``) followed by ours: ``Model`` (bitflip, stuck-at-0, stuck-at-1,
value), ``Value`` (the value written by a value fault, else empty) and ``Stratum`` (the plan population the fault
was drawn from: ``<layer>/<bit>``, ``<layer>/all`` or ``*/all``). A file with only the first four columns reads
as bit flips. Activation faults name the layer output: ``layer1.0.conv1.output`` with a (C, H, W) index.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diehardlab.hardening.sfi.bits import FLOAT_BITS
from diehardlab.hardening.sfi.plan import Plan

from diehardlab.errors import DataError

MODELS = ("bitflip", "stuck-at-0", "stuck-at-1", "value")
HEADER = ["Injection", "Layer", "TensorIndex", "Bit", "Model", "Value", "Stratum"]


@dataclass(frozen=True)
class Fault:
    injection: int
    tensor: str  # parameter name ("fc.weight") or "<module>.output"
    index: tuple[int, ...]
    bit: int
    model: str = "bitflip"
    value: float | None = None
    stratum: str = ""

    @property
    def is_activation(self) -> bool:
        return self.tensor.endswith(".output")

    @property
    def target_layer(self) -> str:
        """The layer name of tables and strata: the module, or ``<module>.output`` for an activation fault."""
        return self.tensor if self.is_activation else self.module

    @property
    def module(self) -> str:
        return self.tensor.rsplit(".", 1)[0] if "." in self.tensor else ""


def _faults_in_layer(layer, elems: np.ndarray, bits: np.ndarray, vals: np.ndarray, models, label: str, start: int):
    """Fault objects for flat element indices of one layer (weight then bias), vectorised unravel.

    ``elems`` is ascending (the draws are sorted), so going tensor by tensor keeps the draw order."""
    out = []
    offset = 0
    for name, shape in zip(layer.tensors, layer.shapes):
        size = math.prod(shape)
        sel = (elems >= offset) & (elems < offset + size)
        if sel.any():
            idx = np.stack(np.unravel_index(elems[sel] - offset, shape), axis=1).tolist()
            for ix, b, v in zip(idx, bits[sel].tolist(), vals[sel].tolist()):
                out.append(Fault(start + len(out), name, tuple(ix), b, models[v], None, label))
        offset += size
    return out


def draw(plan: Plan, seed: int) -> list[Fault]:
    """Draw each stratum's sample without replacement, seeded; identical for identical (plan, seed)."""
    rng = np.random.default_rng(seed)
    vals = plan.values_per_bit
    models = ("stuck-at-0", "stuck-at-1") if plan.fault_model == "stuck-at" else ("bitflip",)
    by_name = {x.name: x for x in plan.layers}
    faults: list[Fault] = []
    for s in plan.strata:
        if s.n <= 0:
            continue
        picks = np.sort(rng.choice(s.population, size=s.n, replace=False))
        label = f"{s.layer}/{s.bit if s.bit >= 0 else 'all'}"
        if s.layer == "*":
            # network-wise: the population is every (layer element, bit, value) of the whole network
            sizes = np.array([x.numel * FLOAT_BITS * vals for x in plan.layers], dtype=np.int64)
            bounds = np.cumsum(sizes)
            which = np.searchsorted(bounds, picks, side="right")
            for li, layer in enumerate(plan.layers):
                rest = picks[which == li] - (bounds[li - 1] if li else 0)
                if rest.size:
                    elems, r = np.divmod(rest, FLOAT_BITS * vals)
                    bits, v = np.divmod(r, vals)
                    faults += _faults_in_layer(layer, elems, bits, v, models, label, len(faults))
            continue
        layer = by_name[s.layer]
        if s.bit >= 0:
            elems, v = np.divmod(picks, vals)
            bits = np.full_like(elems, s.bit)
        else:
            elems, r = np.divmod(picks, FLOAT_BITS * vals)
            bits, v = np.divmod(r, vals)
        faults += _faults_in_layer(layer, elems, bits, v, models, label, len(faults))
    return faults


def write_csv(faults: list[Fault], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for f in faults:
            w.writerow(
                [
                    f.injection,
                    f.tensor,
                    str(f.index),
                    f.bit,
                    f.model,
                    "" if f.value is None else repr(f.value),
                    f.stratum,
                ]
            )


def _parse_index(text: str) -> tuple[int, ...]:
    body = text.strip().strip("()[]").strip()
    if not body:
        return ()
    return tuple(int(p) for p in body.split(",") if p.strip())


def read_csv(path: Path) -> list[Fault]:
    """Read a fault list; errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--faults: {path} does not exist; write one with 'diehard sfi run --plan ...' or by hand")
    faults = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in HEADER[:4] if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: line 1: missing column(s) {', '.join(missing)} (need {','.join(HEADER[:4])})")
        for line, row in enumerate(reader, start=2):
            try:
                model = (row.get("Model") or "bitflip").strip()
                if model not in MODELS:
                    raise ValueError(f"column Model: {model!r} is not one of {', '.join(MODELS)}")
                value = row.get("Value") or ""
                bit = int(row["Bit"]) if row["Bit"].strip() else -1
                if model != "value" and not 0 <= bit < FLOAT_BITS:
                    raise ValueError(f"column Bit: {row['Bit']!r} is not a float32 bit position (0..31)")
                faults.append(
                    Fault(
                        int(row["Injection"]),
                        row["Layer"].strip(),
                        _parse_index(row["TensorIndex"]),
                        bit,
                        model,
                        float(value) if value.strip() else None,
                        (row.get("Stratum") or "").strip(),
                    )
                )
            except (ValueError, TypeError, AttributeError) as exc:
                raise DataError(f"{path}: line {line}: {exc}") from exc
    return faults
