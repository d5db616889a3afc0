"""The fault list: drawn from a plan with a seed, read and written in the forms other tools use, reusable.

Forms (columns are read by name, so any order reads):

- the resilience benchmark suite's and SFIadvancedmodels' ``Injection,Layer,TensorIndex,Bit``, e.g.
  ``0,layer1.0.conv1,"(3, 0, 2, 1)",30``: ``Layer`` is the module whose ``.weight`` is flipped (SFIadvancedmodels
  injects ``<Layer>.weight`` and takes the *last* column as the bit); Bit 0 is the least significant bit;
- the suite's results, those four plus ``n_injections,masked,non_critical,critical`` (images per outcome);
- ours: ``Injection,Layer,TensorIndex,Model,Value,Stratum,Bit``, the bit last so that SFIadvancedmodels reads it
  unchanged; ``Model`` is bitflip, stuck-at-0, stuck-at-1 or value, ``Value`` the value a value fault writes,
  ``Stratum`` the plan population the fault was drawn from (``<layer>/<bit>``, ``<layer>/all``, ``*/all``).

A ``Layer`` ending in ``.weight``/``.bias`` names that parameter (older lists); activation faults name the layer
output, ``layer1.0.conv1.output``, with a (C, H, W) index. A list without ``Model`` reads as bit flips.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diehardlab.hardening.sfi.bits import FLOAT_BITS
from diehardlab.hardening.sfi.plan import Plan

from diehardlab.errors import ConfigError, DataError

MODELS = ("bitflip", "stuck-at-0", "stuck-at-1", "value")
HEADER = ["Injection", "Layer", "TensorIndex", "Model", "Value", "Stratum", "Bit"]


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
            sizes = np.array([x.numel * x.width * vals for x in plan.layers], dtype=np.int64)
            bounds = np.cumsum(sizes)
            which = np.searchsorted(bounds, picks, side="right")
            for li, layer in enumerate(plan.layers):
                rest = picks[which == li] - (bounds[li - 1] if li else 0)
                if rest.size:
                    elems, r = np.divmod(rest, layer.width * vals)
                    bits, v = np.divmod(r, vals)
                    faults += _faults_in_layer(layer, elems, bits, v, models, label, len(faults))
            continue
        layer = by_name[s.layer]
        if s.bit >= 0:
            elems, v = np.divmod(picks, vals)
            bits = np.full_like(elems, s.bit)
        else:
            elems, r = np.divmod(picks, layer.width * vals)
            bits, v = np.divmod(r, vals)
        faults += _faults_in_layer(layer, elems, bits, v, models, label, len(faults))
    return faults


# ------------------------------------------------------------------------------------------ reading and writing

SUITE_HEADER = ["Injection", "Layer", "TensorIndex", "Bit"]
RESULT_COLUMNS = ["n_injections", "masked", "non_critical", "critical"]
FORMS = ("diehardlab", "suite", "suite-results")
_SUFFIXES = (".weight", ".bias", ".output")
_INDEX = re.compile(r"^\s*[\(\[]\s*(\d+(\s*,\s*\d+)*)?\s*,?\s*[\)\]]\s*$")


@dataclass
class FaultList:
    """A fault list as read: the faults, the published per-fault outcome counts when the file has them
    (the suite's 8-column form; rows x [n_injections, masked, non_critical, critical]) and the form."""

    faults: list[Fault]
    counts: np.ndarray | None
    form: str  # "suite" (4 columns), "suite-results" (8 columns), "diehardlab"
    path: Path
    rows_line: list[int]  # the file line of each fault (for error messages)
    ends_with_newline: bool = True


def layer_column(f: Fault) -> str:
    """The Layer column as the suite and SFIadvancedmodels write it: the module name for a weight fault
    (SFIadvancedmodels injects ``<Layer>.weight``), the full tensor name otherwise."""
    return f.module if f.tensor.endswith(".weight") and not f.is_activation else f.tensor


def tensor_from_layer(layer: str) -> str:
    """The parameter a Layer cell names: itself when it ends in .weight/.bias/.output, else ``<layer>.weight``."""
    return layer if layer.endswith(_SUFFIXES) else f"{layer}.weight"


def _atomic_csv(path: Path, header: list[str], rows) -> None:
    from diehardlab.outfiles import write_atomic as atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            # "\n" as the suite's own files (pandas); SFIadvancedmodels' csv reader takes either ending.
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)

    atomic_write(Path(path), write)


def _suite_check(faults: list[Fault], form: str) -> None:
    for f in faults:
        if f.model != "bitflip" or not f.tensor.endswith(".weight"):
            raise ConfigError(
                f"--list-format {form}: fault {f.injection} ({f.model} on {f.tensor}) cannot be written in the "
                "suite's form, which holds bit flips of conv/linear weights only; use the diehardlab form"
            )


def write_csv(faults: list[Fault], path: Path, form: str = "diehardlab", counts: np.ndarray | None = None) -> None:
    """Write a fault list (atomically) in one of :data:`FORMS`.

    - ``diehardlab``: ``Injection,Layer,TensorIndex,Model,Value,Stratum,Bit``: the suite's columns with ours
      before the bit, because SFIadvancedmodels reads the *last* column as the bit; weight faults name the
      module as it expects. Stuck-at, value, bias and activation faults are ours only.
    - ``suite``: exactly ``Injection,Layer,TensorIndex,Bit`` (the suite's and SFIadvancedmodels' form).
    - ``suite-results``: those plus ``n_injections,masked,non_critical,critical`` from ``counts`` (rows x 4).
    """
    if form not in FORMS:
        raise ConfigError(f"--list-format: {form!r} is not one of {', '.join(FORMS)}")
    if form == "diehardlab":
        rows = (
            [
                f.injection,
                layer_column(f),
                str(f.index),
                f.model,
                "" if f.value is None else repr(f.value),
                f.stratum,
                f.bit,
            ]
            for f in faults
        )
        _atomic_csv(path, HEADER, rows)
        return
    _suite_check(faults, form)
    if form == "suite":
        _atomic_csv(path, SUITE_HEADER, ([f.injection, layer_column(f), str(f.index), f.bit] for f in faults))
        return
    if counts is None or counts.shape != (len(faults), 4):
        raise ValueError("suite-results needs counts of shape (faults, 4)")
    rows = ([f.injection, layer_column(f), str(f.index), f.bit, *(int(v) for v in c)] for f, c in zip(faults, counts))
    _atomic_csv(path, SUITE_HEADER + RESULT_COLUMNS, rows)


def _parse_index(text: str) -> tuple[int, ...]:
    """``(3, 0, 2, 1)`` or ``[3, 0, 2, 1]``; anything else (a cut-off ``(3, 0, 2``) is an error."""
    if not _INDEX.match(text):
        raise ValueError(f"column TensorIndex: {text!r} is not an index like (3, 0, 2, 1)")
    body = text.strip()[1:-1]
    return tuple(int(p) for p in body.split(",") if p.strip())


def read_list(path: Path) -> FaultList:
    """Read a fault list in any of :data:`FORMS` (columns by name); errors name the file, line and column.

    A row with another number of fields than the header, an unterminated quote, a cut-off index or result
    counts that do not add up is an error naming its line: a truncated file is never taken for a whole list.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--faults: {path} does not exist; write one with 'diehard sfi run --plan ...' or by hand")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the fault list ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV fault list (byte {exc.start} is not UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise DataError(f"{path}: line 1: {exc}") from None
    missing = [c for c in SUITE_HEADER if c not in header]
    if missing:
        raise DataError(f"{path}: line 1: missing column(s) {', '.join(missing)} (need {','.join(SUITE_HEADER)})")
    col = {c: header.index(c) for c in header}
    has_results = all(c in col for c in RESULT_COLUMNS)
    form = "suite-results" if has_results else ("suite" if len(header) == 4 else "diehardlab")
    faults: list[Fault] = []
    counts: list[list[int]] = []
    lines: list[int] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {line}: {len(row)} fields where the header has {len(header)} "
                    "(a truncated or damaged list?); no row of it was used"
                )
            try:
                faults.append(_fault(row, col, line))
                if has_results:
                    counts.append(_counts(row, col))
            except (ValueError, TypeError) as exc:
                raise DataError(f"{path}: line {line}: {exc}") from None
            lines.append(line)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: {exc} (a truncated file?); no row of it was used") from None
    table = np.array(counts, dtype=np.int64).reshape(-1, 4) if has_results else None
    if table is not None:
        _check_totals(path, table, lines)
    return FaultList(
        faults,
        table,
        form,
        path,
        lines,
        ends_with_newline=raw.endswith(b"\n") or not faults,
    )


def _fault(row: list[str], col: dict[str, int], line: int) -> Fault:
    def cell(name: str) -> str:
        return row[col[name]].strip() if name in col else ""

    model = cell("Model") or "bitflip"
    if model not in MODELS:
        raise ValueError(f"column Model: {model!r} is not one of {', '.join(MODELS)}")
    bit_text = cell("Bit")
    bit = int(bit_text) if bit_text else -1
    if model != "value" and not 0 <= bit < FLOAT_BITS:
        raise ValueError(f"column Bit: {bit_text!r} is not a float32 bit position (0..31)")
    layer = cell("Layer")
    if not layer:
        raise ValueError("column Layer is empty")
    value = cell("Value")
    return Fault(
        int(cell("Injection")),
        tensor_from_layer(layer),
        _parse_index(row[col["TensorIndex"]]),
        bit,
        model,
        float(value) if value else None,
        cell("Stratum"),
    )


def _counts(row: list[str], col: dict[str, int]) -> list[int]:
    vals = []
    for name in RESULT_COLUMNS:
        text = row[col[name]].strip()
        if not text.isdigit():
            raise ValueError(f"column {name}: {text!r} is not a count of images")
        vals.append(int(text))
    return vals


def _check_totals(path: Path, counts: np.ndarray, lines: list[int]) -> None:
    """Every fault of a campaign saw the same images: masked + non_critical + critical is one number for all
    rows (it need not be n_injections: the suite's GTSRB DenseNet-121 list counts 3,072 of 12,630 images). A
    row that differs, such as a last row cut inside a number, is refused."""
    if not len(counts):
        return
    totals = counts[:, 1:].sum(axis=1)
    values, freq = np.unique(totals, return_counts=True)
    common = values[freq.argmax()]
    odd = np.flatnonzero(totals != common)
    if len(odd):
        k = int(odd[0])
        raise DataError(
            f"{path}: line {lines[k]}: masked + non_critical + critical = {int(totals[k])}, but {int(freq.max())} "
            f"other rows count {int(common)} images (a truncated or edited row?); no row of it was used"
        )


def read_csv(path: Path) -> list[Fault]:
    """The faults of a list in any form (see :func:`read_list`)."""
    return read_list(path).faults


# ------------------------------------------------------------------------------------------ checking against a model


def check_against(
    faults: list[Fault],
    model,
    output_shapes: dict[str, tuple[int, ...]] | None = None,
    source: str = "the fault list",
    lines: list[int] | None = None,
) -> None:
    """Refuse a list whose rows do not address the model, before anything runs.

    One error: the first row that does not fit (its line, what it names, what the model has) and how many rows
    do not fit, which says whether it is a typo or a list for another model.
    """
    from diehardlab.hardening.sfi.targets import stored_tensors

    stored = stored_tensors(model)
    params = {n: s.shape for n, s in stored.items()}
    layers = [n.rsplit(".", 1)[0] for n in params if n.endswith(".weight") and len(params[n]) >= 2]
    bad: list[tuple[int, str]] = []
    for k, f in enumerate(faults):
        if f.is_activation:
            found = (output_shapes or {}).get(f.module)
            what = f"layer output {f.tensor}"
            if found is None:
                bad.append((k, f"the model has no convolution or linear layer {f.module!r}"))
                continue
            # (format, shape) from targets.output_shapes, or a bare shape (float32)
            fmt, shape = found if len(found) == 2 and isinstance(found[1], tuple) else (None, found)
        else:
            shape = params.get(f.tensor)
            what = f"parameter {f.tensor}"
            if shape is None:
                bad.append((k, f"the model has no layer {layer_column(f)!r} ({f.tensor})"))
                continue
            fmt = stored[f.tensor].fmt
        idx = f.index
        if len(idx) != len(shape) or any(not 0 <= i < s for i, s in zip(idx, shape)):
            bad.append((k, f"index {idx} is outside {what} of shape {shape}"))
        elif fmt is not None and f.model != "value" and not 0 <= f.bit < fmt.width:
            bad.append((k, f"bit {f.bit} is outside {what}, stored in {fmt.name} (bits 0..{fmt.width - 1})"))
    if not bad:
        return
    k, why = bad[0]
    where = f"line {lines[k]}" if lines and k < len(lines) else f"fault {faults[k].injection}"
    has = ", ".join(f"{n} {tuple(params[n + '.weight'])}" for n in layers[:4]) + (" ..." if len(layers) > 4 else "")
    other = "format" if "stored in" in why else "model"
    hint = f"; {len(bad)} of {len(faults)} rows do not fit: a list for another {other}?" if len(bad) > 1 else ""
    has = "" if other == "format" else f"; the model has {has}"
    raise ConfigError(f"{source}: {where}: {why}{has}{hint}. Nothing was run")


# ------------------------------------------------------------------------------------------ other formats


def to_width(faults: list[Fault], width_of: dict[str, int], drawn_width: int = FLOAT_BITS) -> list[Fault]:
    """The same fault sites with each bit scaled from ``drawn_width`` to its tensor's format width
    (``bit * width // drawn_width``): the sign stays the sign, the exponent's top the exponent's top, and a bit
    drawn uniformly stays uniform (each of a 16-bit format's bits takes two of float32's). Tensors missing from
    ``width_of`` (and value faults) keep their bit."""
    out = []
    for f in faults:
        w = width_of.get(f.tensor if not f.is_activation else f.module + ".output")
        if w is None or w == drawn_width or f.model == "value":
            out.append(f)
        else:
            out.append(Fault(f.injection, f.tensor, f.index, f.bit * w // drawn_width, f.model, f.value, f.stratum))
    return out


def draw_uniform(tensors: list[tuple[str, tuple[int, ...], int]], n: int, fault_model: str, seed: int) -> list[Fault]:
    """``n`` faults drawn without replacement, uniformly over every (element, bit, value) of ``tensors``
    (name, shape, format width): the network-wise sample of one population, e.g. an int8 model's per-channel
    weight scales."""
    vals = 2 if fault_model == "stuck-at" else 1
    models = ("stuck-at-0", "stuck-at-1") if fault_model == "stuck-at" else ("bitflip",)
    sizes = np.array([math.prod(s) * w * vals for _, s, w in tensors], dtype=np.int64)
    total = int(sizes.sum())
    if not 0 < n <= total:
        raise ConfigError(f"cannot draw {n} faults from a population of {total}")
    picks = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    bounds = np.cumsum(sizes)
    which = np.searchsorted(bounds, picks, side="right")
    out: list[Fault] = []
    for ti, (name, shape, width) in enumerate(tensors):
        rest = picks[which == ti] - (bounds[ti - 1] if ti else 0)
        elems, r = np.divmod(rest, width * vals)
        bits, v = np.divmod(r, vals)
        for e, b, m in zip(elems.tolist(), bits.tolist(), v.tolist()):
            idx = tuple(int(i) for i in np.unravel_index(e, shape))
            out.append(Fault(len(out), name, idx, int(b), models[m], None, "*/all"))
    return out
