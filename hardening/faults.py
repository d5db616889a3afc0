"""Feature-map fault models and the injector that applies them during training and evaluation.

A fault corrupts part of one conv layer's output for one image:

- ``single``: one value (channel, row and column drawn independently);
- ``line``: one row or one column (drawn per image) of one channel;
- ``block``: a rectangle of ``1..ceil(block_max_frac * H)`` rows by ``1..ceil(block_max_frac * W)`` columns at a
  random position, in each channel with probability ``block_channel_p`` (at least one channel);
- ``channel``: one whole channel;
- ``mix``: one of the four above, drawn per image.

``value="magnitude"`` multiplies each corrupted value by ``s * m`` with ``m`` uniform in ``magnitude`` and ``s`` a
random sign (``magnitude_scale`` scales ``m``: the training curriculum grows it linearly with the epoch);
``value="nan"`` / ``"inf"`` writes NaN / +-Inf instead.

Everything is vectorised on the tensor's device: masks come from comparisons of broadcast index ranges with
per-image random positions; there is no Python loop over images or channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from diehardlab.errors import ConfigError

KINDS = ("single", "line", "block", "channel", "mix")
VALUES = ("magnitude", "nan", "inf")
BASE_KINDS = ("single", "line", "block", "channel")


@dataclass
class FaultSpec:
    kind: str = "block"
    value: str = "magnitude"
    magnitude: tuple[float, float] = (1.0, 1000.0)
    # Probability that an image of the batch is corrupted (training); evaluation uses 1.0.
    p: float = 0.75
    block_channel_p: float = 0.5
    block_max_frac: float = 0.5
    magnitude_scale: float = 1.0
    # Per-forward: one random conv per forward for the whole batch (training). Per-image: each image draws its
    # own layer (evaluation: exactly one fault per image, any layer distribution).
    layer_choice: str = "per-forward"
    # Relative weights of the target layers (empty: uniform).
    layer_weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.magnitude = (float(self.magnitude[0]), float(self.magnitude[1]))
        if self.kind not in KINDS:
            raise ConfigError(f"faults -> kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.value not in VALUES:
            raise ConfigError(f"faults -> value: {self.value!r} is not one of {', '.join(VALUES)}")
        if self.layer_choice not in ("per-forward", "per-image"):
            raise ConfigError(f"faults -> layer_choice: {self.layer_choice!r} is not per-forward or per-image")
        lo, hi = self.magnitude
        if not 0 <= lo <= hi:
            raise ConfigError(f"faults -> magnitude: need 0 <= lo <= hi (got {self.magnitude})")
        for name in ("p", "block_channel_p", "block_max_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"faults -> {name}: must be within [0, 1] (got {v!r})")
        if self.magnitude_scale < 0:
            raise ConfigError(f"faults -> magnitude_scale: must be >= 0 (got {self.magnitude_scale!r})")
        if any(w < 0 for w in self.layer_weights) or (self.layer_weights and sum(self.layer_weights) <= 0):
            raise ConfigError("faults -> layer_weights: must be non-negative with a positive sum")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "faults") -> FaultSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        data = dict(data)
        if "magnitude" in data:
            data["magnitude"] = tuple(data["magnitude"])
        if "layer_weights" in data:
            data["layer_weights"] = [float(w) for w in data["layer_weights"]]
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["magnitude"] = list(self.magnitude)
        return d


def _device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``gen`` (same stream for the same seed, no host round trip)."""
    if gen.device == device or (gen.device.type == device.type == "cpu"):
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
    dev_gen = torch.Generator(device=device)
    dev_gen.manual_seed(seed)
    return dev_gen


def _randint(hi: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniform integers in ``[0, hi)`` elementwise (``hi`` >= 1), vectorised."""
    u = torch.rand(hi.shape, generator=gen, device=hi.device)
    return torch.minimum((u * hi).long(), hi.long() - 1)


def fault_mask(
    shape: Sequence[int], spec: FaultSpec, gen: torch.Generator, device: torch.device, kinds: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bool mask of ``shape`` (N, C, H, W) with one fault per image, and the per-image kind index.

    ``kinds`` (N,) selects the fault model per image as an index into ``BASE_KINDS``; by default it
    follows ``spec.kind`` (random per image for ``mix``).
    """
    n, c, h, w = (int(s) for s in shape)
    if kinds is None:
        if spec.kind == "mix":
            kinds = _randint(torch.full((n,), len(BASE_KINDS), device=device), gen)
        else:
            kinds = torch.full((n,), BASE_KINDS.index(spec.kind), device=device, dtype=torch.long)
    full = torch.ones(n, device=device)
    ch = _randint(full * c, gen).view(n, 1, 1, 1)
    row = _randint(full * h, gen)
    col = _randint(full * w, gen)
    # Block extent; the rectangle lies inside the map, its corner is uniform over valid positions.
    bh = 1 + _randint(full * max(1, math.ceil(spec.block_max_frac * h)), gen)
    bw = 1 + _randint(full * max(1, math.ceil(spec.block_max_frac * w)), gen)
    r0 = _randint(h - bh + 1, gen).view(n, 1, 1, 1)
    c0 = _randint(w - bw + 1, gen).view(n, 1, 1, 1)
    by_row = torch.rand(n, generator=gen, device=device).view(n, 1, 1, 1) < 0.5
    chan_p = torch.rand(n, c, generator=gen, device=device) < spec.block_channel_p
    row, col = row.view(n, 1, 1, 1), col.view(n, 1, 1, 1)
    bh, bw = bh.view(n, 1, 1, 1), bw.view(n, 1, 1, 1)

    ci = torch.arange(c, device=device).view(1, c, 1, 1)
    hi = torch.arange(h, device=device).view(1, 1, h, 1)
    wi = torch.arange(w, device=device).view(1, 1, 1, w)
    in_channel = ci == ch
    k = kinds.view(n, 1, 1, 1)
    mask = torch.zeros((n, c, h, w), dtype=torch.bool, device=device)
    if bool((kinds == 0).any()):  # single
        mask |= (k == 0) & in_channel & (hi == row) & (wi == col)
    if bool((kinds == 1).any()):  # line: a row or a column of one channel
        line = torch.where(by_row, hi == row, wi == col)
        mask |= (k == 1) & in_channel & line
    if bool((kinds == 2).any()):  # block
        chans = (chan_p.view(n, c, 1, 1) | in_channel) & (k == 2)
        mask |= chans & (hi >= r0) & (hi < r0 + bh) & (wi >= c0) & (wi < c0 + bw)
    if bool((kinds == 3).any()):  # channel
        mask |= (k == 3) & in_channel
    return mask, kinds


def corrupt(
    out: torch.Tensor, spec: FaultSpec, gen: torch.Generator, select: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A corrupted copy of ``out`` (N, C, H, W) or (N, F), and the bool mask of the corrupted elements.

    ``select`` (N,) bool chooses the images to corrupt (None: all). ``gen`` seeds everything; a CPU generator
    works with a CUDA tensor (a device generator is seeded from it).
    """
    device = out.device
    g = _device_generator(gen, device)
    flat = out.dim() == 2
    view = out.view(out.shape[0], out.shape[1], 1, 1) if flat else out
    if view.dim() != 4:
        raise ValueError(f"corrupt expects an (N, C, H, W) or (N, F) tensor, got shape {tuple(out.shape)}")
    mask, _ = fault_mask(view.shape, spec, g, device)
    if select is not None:
        mask &= select.to(device=device, dtype=torch.bool).view(-1, 1, 1, 1)
    if spec.value == "magnitude":
        lo, hi = spec.magnitude
        u = torch.rand(view.shape, generator=g, device=device, dtype=torch.float32)
        sign = torch.where(torch.rand(view.shape, generator=g, device=device) < 0.5, -1.0, 1.0)
        factor = (lo + (hi - lo) * u) * spec.magnitude_scale * sign
        bad = view * factor.to(view.dtype)
    elif spec.value == "nan":
        bad = torch.full_like(view, float("nan"))
    else:
        sign = torch.where(torch.rand(view.shape, generator=g, device=device) < 0.5, -1.0, 1.0)
        bad = (sign * float("inf")).to(view.dtype)
    result = torch.where(mask, bad, view)
    if flat:
        return result.view(out.shape), mask.view(out.shape)
    return result, mask


class FaultInjector:
    """Forward hooks that corrupt the output of one conv layer per forward (or one layer per image).

    Per forward: a layer is drawn (``spec.layer_weights`` or uniform); each image is corrupted with probability
    ``spec.p`` (``select`` overrides). Use as a context manager, or ``attach()`` / ``detach()``; set ``enabled``
    to pause it (the trainer turns it off for clean evaluation). ``last["layer"]`` holds the latest
    forward's layer index per image (-1 = not corrupted); with ``record`` set, ``last["masks"]`` its masks.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: FaultSpec,
        gen: torch.Generator,
        layers: list[tuple[str, nn.Module]] | None = None,
    ):
        from hardening.models import conv_layers

        self.model = model
        self.spec = spec
        self.gen = gen
        self.layers = layers if layers is not None else conv_layers(model)
        if not self.layers:
            raise ValueError("the model has no conv layer to inject into")
        if spec.layer_weights and len(spec.layer_weights) != len(self.layers):
            raise ConfigError(
                f"faults -> layer_weights: {len(spec.layer_weights)} weights for {len(self.layers)} conv layers"
            )
        w = spec.layer_weights or [1.0] * len(self.layers)
        self.weights = torch.tensor(w, dtype=torch.float64)
        self.enabled = True
        self.select: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._target: torch.Tensor | None = None  # per-image layer index for this forward (-1: none)
        self._target_cpu = torch.empty(0, dtype=torch.long)
        self.record = False  # keep the masks of the latest forward in ``last["masks"]`` (tests, fault lists)
        self.last: dict[str, Any] = {}

    def attach(self) -> FaultInjector:
        if not self._handles:
            self._handles.append(self.model.register_forward_pre_hook(self._choose))
            for idx, (_, layer) in enumerate(self.layers):
                self._handles.append(layer.register_forward_hook(self._make_hook(idx)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> FaultInjector:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _choose(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self.enabled:
            self._target = None
            return
        x = args[0]
        n = x.shape[0]
        if self.select is not None:
            chosen = self.select.to(torch.bool).cpu()
        else:
            chosen = torch.rand(n, generator=self.gen) < self.spec.p
        if self.spec.layer_choice == "per-image":
            layer = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
        else:
            layer = torch.multinomial(self.weights, 1, generator=self.gen).expand(n)
        target = torch.where(chosen, layer, torch.full_like(layer, -1))
        self._target_cpu = target
        self._target = target.to(x.device)
        self.last = {"layer": target, "masks": []}

    def _make_hook(self, idx: int):
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            target = self._target
            if target is None:
                return None
            # The choice lives on the host too, so skipping untargeted layers costs no device sync.
            if not bool((self._target_cpu == idx).any()):
                return None
            bad, mask = corrupt(out, self.spec, self.gen, target == idx)
            if self.record:
                self.last["masks"].append((idx, mask))
            return bad

        return hook


def curriculum_scale(epoch: int, epochs: int, start: float = 0.1, end: float = 1.0) -> float:
    """Linear curriculum: the magnitude scale goes from ``start`` at epoch 0 to ``end`` at the last epoch."""
    if epochs <= 1:
        return end
    t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
    return start + (end - start) * t
