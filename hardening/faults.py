"""Feature-map fault models and the injector that applies them during training and evaluation.

A fault corrupts part of one conv layer's output for one image:

- ``single``: one value (channel, row and column drawn independently);
- ``line``: one row or one column (drawn per image) of one channel;
- ``block``: a rectangle of ``1..ceil(block_max_frac * H)`` rows by ``1..ceil(block_max_frac * W)`` columns at a
  random position, in each channel with probability ``block_channel_p`` (at least one channel);
- ``channel``: one whole channel;
- ``mix``: one of the four above, drawn per image.

``value="magnitude"`` multiplies the corrupted values by ``s * m`` with ``m`` uniform in ``magnitude`` and ``s`` a
random sign, drawn per image and channel (``magnitude_scale`` scales ``m``: the training curriculum grows it
linearly with the epoch);
``value="nan"`` / ``"inf"`` writes NaN / +-Inf instead.

Everything is vectorised on the tensor's device: masks come from comparisons of broadcast index ranges with
per-image random positions; there is no Python loop over images or channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from diehardlab.hardening.models import config_from_dict
from pydantic import ConfigDict
from torch import nn

from diehardlab.errors import ConfigError

KINDS = ("single", "line", "block", "channel", "mix")
VALUES = ("magnitude", "nan", "inf")
BASE_KINDS = ("single", "line", "block", "channel")


@dataclass
class FaultSpec:
    # Read by pydantic when validating a table into this dataclass: a misspelt key is an error, inf/nan too.
    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

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
        return config_from_dict(cls, data, source)

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


_CONST_CACHE: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}


def _constants(c: int, h: int, w: int, bmh: int, bmw: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-shape constant tensors, made once per device: a host-to-device copy on every forward would stall."""
    key = (c, h, w, bmh, bmw, str(device))
    found = _CONST_CACHE.get(key)
    if found is None:
        limits = torch.tensor([len(BASE_KINDS), c, h, w, bmh, bmw], dtype=torch.float32, device=device)
        sizes = torch.tensor([h + 1, w + 1], dtype=torch.long, device=device)
        ci = torch.arange(c, device=device).view(1, c, 1, 1)
        hi = torch.arange(h, device=device).view(1, 1, h, 1)
        wi = torch.arange(w, device=device).view(1, 1, 1, w)
        found = (limits, limits.long() - 1, sizes, ci, hi, wi)
        if len(_CONST_CACHE) > 256:
            _CONST_CACHE.clear()
        _CONST_CACHE[key] = found
    return found


def fault_mask(
    shape: Sequence[int],
    spec: FaultSpec,
    gen: torch.Generator,
    device: torch.device,
    kinds: torch.Tensor | None = None,
    select: torch.Tensor | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bool mask of ``shape`` (N, C, H, W) with one fault per image, and the per-image kind index.

    ``kinds`` (N,) selects the fault model per image as an index into ``BASE_KINDS``; by default it
    follows ``spec.kind`` (random per image for ``mix``). ``select`` (N,) bool leaves the other images clean.
    ``channels_last`` lays the mask out in memory as a channels-last tensor, so that combining it with a
    channels-last feature map runs the fast same-layout kernels.
    """
    pairs, kinds = _mask_factors(shape, spec, gen, device, kinds, select)
    return _combine(pairs, shape, device, channels_last), kinds


def _combine(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], shape: Sequence[int], device: torch.device, channels_last: bool
) -> torch.Tensor:
    # Written into a tensor of the wanted layout: an elementwise result otherwise follows its inputs' strides.
    layout = torch.channels_last if channels_last else torch.contiguous_format
    mask = torch.empty(tuple(shape), dtype=torch.bool, device=device, memory_format=layout)
    torch.logical_and(pairs[0][0], pairs[0][1], out=mask)
    if len(pairs) > 1:
        part = torch.empty_like(mask)
        for a, b in pairs[1:]:
            torch.logical_and(a, b, out=part)
            mask.logical_or_(part)
    return mask


def _mask_factors(
    shape: Sequence[int],
    spec: FaultSpec,
    gen: torch.Generator,
    device: torch.device,
    kinds: torch.Tensor | None,
    select: torch.Tensor | None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The mask as (a, b) pairs, one per fault kind present: mask = OR over pairs of (a AND b), where ``a`` is
    (N, C, H, 1) and ``b`` (N or 1, 1, 1, W). Only combining them costs a full-size pass."""
    n, c, h, w = (int(s) for s in shape)
    bmh = max(1, math.ceil(spec.block_max_frac * h))
    bmw = max(1, math.ceil(spec.block_max_frac * w))
    limits, top, sizes, ci, hi, wi = _constants(c, h, w, bmh, bmw, device)
    # Every random number of the mask in one draw, and all integer draws in one product (a handful of kernels
    # whatever the fault model): kind, channel, row, column, block height - 1, block width - 1 | block corner
    # (row, column) | row-or-column | per-channel block selection.
    u = torch.rand((n, 9 + c), generator=gen, device=device)
    ints = torch.minimum((u[:, :6] * limits).long(), top)
    kinds_given = kinds is not None
    if kinds is None:
        if spec.kind == "mix":
            kinds = ints[:, 0]
        else:
            kinds = torch.full((n,), BASE_KINDS.index(spec.kind), device=device, dtype=torch.long)
    pos = ints.view(n, 6, 1, 1)
    ch, row, col = pos[:, 1:2], pos[:, 2:3], pos[:, 3:4]
    in_channel = ci == ch
    if select is not None:
        keep = select.to(device=device, dtype=torch.bool).view(n, 1, 1, 1)
        in_channel = in_channel & keep
    # Which kinds occur is known on the host unless the kind is drawn per image (mix), so a single-kind spec
    # builds only its own mask and never waits on the device.
    present = range(len(BASE_KINDS)) if spec.kind == "mix" or kinds_given else (BASE_KINDS.index(spec.kind),)
    # Each mask is a (channel x row) part AND a (column) part, so only that AND is full-size.
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for kind in present:
        if kind == 0:  # single
            a, b = in_channel & (hi == row), wi == col
        elif kind == 1:  # line: a row or a column of one channel
            by_row = (u[:, 8] < 0.5).view(n, 1, 1, 1)
            a, b = in_channel & (~by_row | (hi == row)), by_row | (wi == col)
        elif kind == 2:  # block: the same rectangle, inside the map, in each selected channel
            extent = ints[:, 4:6] + 1
            corner = (u[:, 6:8] * (sizes - extent)).long()
            r0, c0 = corner[:, 0].view(n, 1, 1, 1), corner[:, 1].view(n, 1, 1, 1)
            bh, bw = extent[:, 0].view(n, 1, 1, 1), extent[:, 1].view(n, 1, 1, 1)
            chans = (u[:, 9:] < spec.block_channel_p).view(n, c, 1, 1) | (ci == ch)
            if select is not None:
                chans = chans & keep
            a, b = chans & ((hi >= r0) & (hi < r0 + bh)), (wi >= c0) & (wi < c0 + bw)
        else:  # channel
            a, b = in_channel & (hi >= 0), wi >= 0
        if len(present) > 1:
            a = a & (kinds.view(n, 1, 1, 1) == kind)
        pairs.append((a, b))
    return pairs, kinds


def corrupt(
    out: torch.Tensor, spec: FaultSpec, gen: torch.Generator, select: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A corrupted copy of ``out`` (N, C, H, W) or (N, F), and the bool mask of the corrupted elements.

    ``select`` (N,) bool chooses the images to corrupt (None: all). ``gen`` seeds everything; a CPU generator
    works with a CUDA tensor (a device generator is seeded from it).
    """
    result, mask = _corrupt(out, spec, gen, select, need_mask=True)
    return result, mask  # type: ignore[return-value]


def _corrupt(
    out: torch.Tensor, spec: FaultSpec, gen: torch.Generator, select: torch.Tensor | None, need_mask: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = out.device
    g = _device_generator(gen, device)
    flat = out.dim() == 2
    view = out.view(out.shape[0], out.shape[1], 1, 1) if flat else out
    if view.dim() != 4:
        raise ValueError(f"corrupt expects an (N, C, H, W) or (N, F) tensor, got shape {tuple(out.shape)}")
    cl = not flat and view.is_contiguous(memory_format=torch.channels_last) and not view.is_contiguous()
    pairs, _ = _mask_factors(view.shape, spec, g, device, None, select)
    # One random factor (magnitude and sign) per image and channel: a corrupted block or line keeps one error
    # per channel. Drawing per element would cost two full-size random tensors on every forward.
    n, c = view.shape[0], view.shape[1]
    r = torch.rand((2, n, c, 1, 1), generator=g, device=device)
    sign = (r[0] < 0.5).to(view.dtype).mul_(2).sub_(1)  # -1 or +1
    mask = _combine(pairs, view.shape, device, cl) if need_mask or spec.value != "magnitude" else None
    if spec.value == "magnitude":
        lo, hi = spec.magnitude
        factor = r[1].to(view.dtype).mul_((hi - lo) * spec.magnitude_scale).add_(lo * spec.magnitude_scale)
        delta = factor.mul_(sign).sub_(1)  # the multiplier minus one, per image and channel
        # w = 1 + sum over the pairs of (a * delta) * b: the multiplier map in one full-size pass, with no
        # bool mask in between; out * w is one full-size product, whose backward is one product too.
        layout = torch.channels_last if cl else torch.contiguous_format
        w = torch.empty(view.shape, dtype=view.dtype, device=device, memory_format=layout)
        one = torch.ones((), dtype=view.dtype, device=device)
        for i, (a, b) in enumerate(pairs):
            if i == 0:
                torch.addcmul(one, a * delta, b.to(view.dtype), out=w)
            else:
                w.addcmul_(a * delta, b.to(view.dtype))
        result = view * w
    else:
        bad = float("nan") if spec.value == "nan" else sign * float("inf")
        result = torch.where(mask, bad, view)  # type: ignore[arg-type]
    if flat:
        return result.view(out.shape), (mask.view(out.shape) if mask is not None else None)
    return result, mask


class FaultInjector:
    """Forward hooks that corrupt the output of one conv layer per forward (or one layer per image).

    Per forward: a layer is drawn (``spec.layer_weights`` or uniform); each image is corrupted with probability
    ``spec.p`` (``select`` overrides). Use as a context manager, or ``attach()`` / ``detach()``; set ``enabled``
    to pause it (the trainer turns it off for clean evaluation). ``last["layer"]`` holds the latest
    forward's layer index per image (-1 = not corrupted); with ``record`` set, ``last["masks"]`` its masks.

    Only the layers drawn for a forward carry a hook during it: a hook on every conv would put each of them on
    PyTorch's slower hooked call path.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: FaultSpec,
        gen: torch.Generator,
        layers: list[tuple[str, nn.Module]] | None = None,
    ):
        from diehardlab.hardening.models import conv_layers

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
        self._pre: Any = None
        self._layer_hooks: list[Any] = []
        self._target: torch.Tensor | None = None  # per-image layer index for this forward (-1: none), on device
        self.record = False  # keep the masks of the latest forward in ``last["masks"]`` (tests, fault lists)
        self.last: dict[str, Any] = {}

    def attach(self) -> FaultInjector:
        if self._pre is None:
            self._pre = self.model.register_forward_pre_hook(self._choose)
        return self

    def detach(self) -> None:
        self._clear_layer_hooks()
        if self._pre is not None:
            self._pre.remove()
            self._pre = None

    def __enter__(self) -> FaultInjector:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _clear_layer_hooks(self) -> None:
        for h in self._layer_hooks:
            h.remove()
        self._layer_hooks.clear()

    def _choose(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._clear_layer_hooks()
        if not self.enabled:
            return
        x = args[0]
        n = x.shape[0]
        if self.select is not None:
            chosen = self.select.to(torch.bool).cpu()
        else:
            chosen = torch.rand(n, generator=self.gen) < self.spec.p
        if self.spec.layer_choice == "per-image":
            layer = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
            hit = sorted(set(layer[chosen].tolist()))
        else:
            one = int(torch.multinomial(self.weights, 1, generator=self.gen))
            layer = torch.full((n,), one, dtype=torch.long)
            hit = [one] if bool(chosen.any()) else []
        target = torch.where(chosen, layer, -1)
        self.last = {"layer": target, "masks": []}
        if not hit:
            return
        if x.device.type == "cuda":
            # Pinned and asynchronous: a plain copy from pageable memory would wait for the whole queue.
            self._target = target.pin_memory().to(x.device, non_blocking=True)
        else:
            self._target = target.to(x.device)
        for idx in hit:
            self._layer_hooks.append(self.layers[idx][1].register_forward_hook(self._make_hook(idx)))

    def _make_hook(self, idx: int):
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            bad, mask = _corrupt(out, self.spec, self.gen, self._target == idx, need_mask=self.record)
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
