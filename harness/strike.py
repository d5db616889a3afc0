"""Particle strikes inside the network, for the beam simulator's ``strike`` events.

A strike is drawn from the fault models the hardening side trains and evaluates with: a value, a line, a block
or a channel of one conv layer's output map for one image (``diehardlab.hardening.faults.corrupt`` in a forward
hook), or one bit of one conv/linear weight (``diehardlab.hardening.sfi.bits``) for every image of the iteration.
It is applied for the iteration it falls in only: the affected batches are run again with the fault, and a
flipped weight is flipped back right after (the runner's reload after an SDC would restore it too, but a
masked strike must not linger).

Whether a strike becomes an SDC depends on the network: a bounded activation or a NaN filter masks what a plain
ReLU lets through. The true SDC and critical-SDC cross sections are therefore the strike cross section times
two probabilities, P(output differs from the golden beyond the threshold | strike) and P(top-1 changes |
strike), which :meth:`NetworkStrikes.calibrate` measures before the run on the DUT's own model and golden
inputs with ``calibration_strikes`` strikes per target (feature-map targets: every image of every batch takes
its own strike at once, so a round costs one pass over the golden batches; weight bits: one pass per strike).
The result is cached beside the logs by a hash of the model, the inputs, the threshold and the strike model,
so a restarted run reuses it, and it goes into the truth file with its counts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diehardlab.hardening.faults import FaultInjector, FaultSpec, corrupt
from diehardlab.hardening.models import conv_layers
from diehardlab.hardening.sfi.bits import flip
from diehardlab.harness.beam import StrikeModel
from torch import nn

from diehardlab.errors import ConfigError
from diehardlab.outfiles import write_text_atomic

FEATURE_KINDS = ("single", "line", "block", "channel")
TARGETS = (*FEATURE_KINDS, "weight_bit")


@dataclass
class Strike:
    target: str  # single | line | block | channel | weight_bit
    layer: str  # conv module (feature map) or parameter (weight bit)
    batch: int = -1  # feature map: the batch and image whose forward it hits
    img: int = -1
    index: tuple[int, ...] = ()  # weight bit: the element and the bit
    bit: int = -1
    elements: int = 0  # values changed (set when applied)

    def record(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v not in (-1, ())}
        if self.index:
            d["index"] = list(self.index)
        return d


@dataclass
class Outcome:
    """What a strike did to the iteration's outputs, against the golden ones."""

    differs: bool  # some output element beyond the threshold (the runner's SDC)
    critical: bool  # and top-1 changed, or a non-finite output, in an image it reached
    images: int = 0  # images whose output differs


def verdicts(o: torch.Tensor, g: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of one batch: (output differs beyond the threshold, and is critical). NaN differs."""
    o, g = o.detach().float(), g.detach().float()
    bad = (~(torch.abs(o - g) <= threshold)).any(dim=1)
    crit = bad & ((o.argmax(dim=1) != g.argmax(dim=1)) | ~torch.isfinite(o).all(dim=1))
    return bad, crit


def judge(outs: Sequence[torch.Tensor], golden: Sequence[torch.Tensor], threshold: float, rows=None) -> Outcome:
    """The runner's comparison (``diehardlab.harness.compare``) applied to ``rows`` ({batch: image indices or
    None for all}); None: every image of every batch."""
    differs = critical = False
    images = 0
    for b, (o, g) in enumerate(zip(outs, golden)):
        if rows is not None and b not in rows:
            continue
        sel = rows.get(b) if rows is not None else None
        if sel is not None:
            o, g = o[sel], g[sel]
        bad, crit = verdicts(o, g, threshold)
        images += int(bad.sum())
        differs |= bool(bad.any())
        critical |= bool(crit.any())
    return Outcome(differs, critical, images)


@dataclass
class Calibration:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> n, sdc, critical
    weights: dict[str, float] = field(default_factory=dict)  # target -> relative frequency
    key: str = ""
    seconds: float = 0.0

    def probability(self, what: str) -> float:
        """P(what | strike), what = sdc or critical, over the targets in their relative frequencies."""
        total = sum(self.weights.values())
        return sum(w * self.counts[t][what] / self.counts[t]["n"] for t, w in self.weights.items()) / total

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_sdc": self.probability("sdc"),
            "p_critical": self.probability("critical"),
            "counts": self.counts,
            "weights": self.weights,
            "key": self.key,
            "seconds": self.seconds,
        }


class NetworkStrikes:
    """Draws and applies strikes on one model; ``gen`` (a CPU generator) makes every draw reproducible."""

    def __init__(self, spec: StrikeModel, model: nn.Module, example: torch.Tensor, gen: torch.Generator):
        self.spec = spec
        self.gen = gen
        self.convs = conv_layers(model)
        if not self.convs and spec.weight_bit <= 0:
            raise ConfigError("beam spec [strike]: the model has no conv layer, and weight_bit is 0")
        self.params = [
            (f"{name}.weight", m.weight)
            for name, m in model.named_modules()
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) and m.weight.dtype == torch.float32
        ]
        weights = {t: float(getattr(spec, t)) for t in TARGETS if getattr(spec, t) > 0}
        if not self.convs:
            weights = {"weight_bit": weights["weight_bit"]} if "weight_bit" in weights else {}
        if "weight_bit" in weights and not self.params:
            raise ConfigError("beam spec [strike]: weight_bit > 0 but the model has no float32 conv/linear weight")
        self._param_of = dict(self.params)  # name -> tensor, for apply (once per strike, in the run loop)
        self._conv_of = dict(self.convs)
        self.targets = list(weights)
        self.target_w = torch.tensor([weights[t] for t in self.targets], dtype=torch.float64)
        self.weights = weights
        self.layer_w = self._layer_weights(model, example)
        sizes = torch.tensor([p.numel() for _, p in self.params], dtype=torch.float64)
        self.param_w = sizes if len(sizes) else torch.ones(1, dtype=torch.float64)
        self.specs = {
            k: FaultSpec(kind=k, value=spec.value, magnitude=tuple(spec.magnitude), p=1.0,
                         block_channel_p=spec.block_channel_p, block_max_frac=spec.block_max_frac,
                         layer_choice="per-image", layer_weights=list(map(float, self.layer_w)))
            for k in FEATURE_KINDS if k in weights
        }  # fmt: skip

    @torch.no_grad()
    def _layer_weights(self, model: nn.Module, example: torch.Tensor) -> torch.Tensor:
        if not self.convs:
            return torch.ones(1, dtype=torch.float64)
        if self.spec.layers == "uniform":
            return torch.ones(len(self.convs), dtype=torch.float64)
        sizes: dict[int, int] = {}
        hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: sizes.__setitem__(k, o[0].numel()))
                 for k, (_, m) in enumerate(self.convs)]  # fmt: skip
        try:
            model(example[:1])
        finally:
            for h in hooks:
                h.remove()
        return torch.tensor([float(sizes.get(k, 0)) for k in range(len(self.convs))], dtype=torch.float64)

    # -- one strike ---------------------------------------------------------------------------------------

    def _pick(self, weights: torch.Tensor) -> int:
        return int(torch.multinomial(weights, 1, generator=self.gen))

    def draw(self, batch_sizes: Sequence[int], target: str | None = None) -> Strike:
        """A strike on a target drawn by the spec's frequencies (or on ``target``), uniform within it."""
        target = target or self.targets[self._pick(self.target_w)]
        if target == "weight_bit":
            name, p = self.params[self._pick(self.param_w)]
            flat = int(torch.randint(p.numel(), (1,), generator=self.gen))
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), p.shape))
            lo, hi = self.spec.bits
            bit = int(torch.randint(lo, hi + 1, (1,), generator=self.gen))
            return Strike(target, name, index=index, bit=bit)
        # One image of the iteration, uniformly over all images of all batches.
        image = int(torch.randint(sum(batch_sizes), (1,), generator=self.gen))
        b = 0
        while image >= batch_sizes[b]:
            image -= batch_sizes[b]
            b += 1
        layer = self.convs[self._pick(self.layer_w)][0]
        return Strike(target, layer, batch=b, img=image)

    @torch.no_grad()
    def apply(
        self, strikes: Sequence[Strike], model: nn.Module, batches: Sequence[torch.Tensor], outs: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The iteration's outputs with these strikes: the batches they reach are run again with the faults."""
        outs = list(outs)
        params, modules = self._param_of, self._conv_of
        bits = [s for s in strikes if s.target == "weight_bit"]
        feats = [s for s in strikes if s.target != "weight_bit"]
        hooks = []
        try:
            for s in bits:
                p = params[s.layer]
                p[s.index] = flip(p[s.index], s.bit)
                s.elements = 1
            for s in feats:
                hooks.append(modules[s.layer].register_forward_hook(self._hook(s)))
            rerun = range(len(batches)) if bits else sorted({s.batch for s in feats})
            for b in rerun:
                self._current = b
                outs[b] = model(batches[b])
        finally:
            for h in hooks:
                h.remove()
            for s in reversed(bits):  # a flip is its own inverse: the exact old bits come back
                p = params[s.layer]
                p[s.index] = flip(p[s.index], s.bit)
        return outs

    def _hook(self, s: Strike):
        spec = self.specs[s.target]

        def fn(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if self._current != s.batch:
                return None
            select = torch.zeros(out.shape[0], dtype=torch.bool)
            select[s.img] = True
            new, mask = corrupt(out, spec, self.gen, select)
            s.elements = int(mask.sum())
            return new

        return fn

    # -- the truth's probabilities ------------------------------------------------------------------------

    @torch.no_grad()
    def calibrate(
        self,
        model: nn.Module,
        batches: Sequence[torch.Tensor],
        golden: Sequence[torch.Tensor],
        threshold: float,
        gen: torch.Generator,
    ) -> Calibration:
        """P(SDC) and P(critical SDC) per strike target, from ``calibration_strikes`` strikes each, drawn from
        ``gen`` (the run's own draws are left where they were: a cached calibration changes nothing)."""
        run_gen, self.gen = self.gen, gen
        try:
            return self._calibrate(model, batches, golden, threshold)
        finally:
            self.gen = run_gen

    def _calibrate(
        self, model: nn.Module, batches: Sequence[torch.Tensor], golden: Sequence[torch.Tensor], threshold: float
    ) -> Calibration:
        n = self.spec.calibration_strikes
        counts: dict[str, dict[str, int]] = {}
        images = sum(len(b) for b in batches)
        for t in self.targets:
            c = {"n": 0, "sdc": 0, "critical": 0}
            if t == "weight_bit":
                for _ in range(n):
                    s = self.draw([len(b) for b in batches], "weight_bit")
                    outs = self.apply([s], model, batches, [torch.empty(0)] * len(batches))
                    o = judge(outs, golden, threshold)
                    c["n"] += 1
                    c["sdc"] += o.differs
                    c["critical"] += o.critical
            else:
                # Every image takes its own strike (own layer, own position): images are independent in eval
                # mode, so one pass over the batches gives one strike outcome per image.
                for _ in range(math.ceil(n / images)):
                    with FaultInjector(model, self.specs[t], self.gen, self.convs):
                        outs = [model(x) for x in batches]
                    for o, g in zip(outs, golden):
                        bad, crit = verdicts(o, g, threshold)
                        c["n"] += len(o)
                        c["sdc"] += int(bad.sum())
                        c["critical"] += int(crit.sum())
            counts[t] = c
        return Calibration(counts, dict(self.weights))


def calibration_key(model: nn.Module, batches: Sequence[torch.Tensor], threshold: float, spec: StrikeModel,
                    seed: int) -> str:  # fmt: skip
    """What the probabilities depend on: the weights, the inputs, the threshold, the strike model, the seed."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for x in batches:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([threshold, spec.model_dump(mode="json"), seed], sort_keys=True).encode())
    return h.hexdigest()


def _probability(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0  # NaN fails


def cached_calibration(folder: Path, key: str) -> dict[str, Any] | None:
    """The calibration saved by an earlier run with the same ``key``; None (measure again) when there is none
    or the file is damaged or foreign: its probabilities go into the truth file's cross sections."""
    path = folder / f".strike-calibration-{key[:24]}.json"
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if not (isinstance(doc, dict) and doc.get("key") == key):
        return None
    return doc if _probability(doc.get("p_sdc")) and _probability(doc.get("p_critical")) else None


def save_calibration(folder: Path, doc: dict[str, Any]) -> None:
    write_text_atomic(folder / f".strike-calibration-{doc['key'][:24]}.json", json.dumps(doc, indent=1) + "\n")
