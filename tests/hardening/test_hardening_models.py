"""Each hardening option changes the model as specified, and nothing else."""

from __future__ import annotations

import pytest
import torch
from diehardlab.hardening.models import (
    BoundedGELU,
    BoundedReLU,
    ModelConfig,
    NanFilter,
    PadShortcut,
    build_model,
    conv_layers,
)
from torch import nn

from diehardlab.errors import ConfigError


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(
    ("arch", "shortcut", "convs"),
    [
        ("resnet20", "pad", 19),
        ("resnet20", "conv", 21),
        ("resnet32", "pad", 31),
        ("resnet44", "conv", 45),
        ("resnet56", "pad", 55),
        ("smallnet", "conv", 6),
    ],
)
def test_architectures_have_the_expected_convs(arch, shortcut, convs):
    model = build_model(ModelConfig(arch=arch, shortcut=shortcut), 3, 7)
    assert len(conv_layers(model)) == convs
    assert _count(model, nn.Linear) == 1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    if shortcut == "pad" and arch != "smallnet":
        assert _count(model, PadShortcut) == 2


def test_conv_layers_are_in_forward_order():
    model = build_model(ModelConfig(arch="resnet20"), 3, 10)
    seen: list[str] = []
    names = {m: n for n, m in conv_layers(model)}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(names[m])) for m in names]
    model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == [n for n, _ in conv_layers(model)]


@pytest.mark.parametrize(("activation", "kind"), [("relu", nn.ReLU), ("relu6", BoundedReLU), ("gelu6", BoundedGELU)])
def test_activation_option(activation, kind):
    model = build_model(ModelConfig(arch="smallnet", activation=activation, act_bound=3.0), 1, 10)
    others = {nn.ReLU, BoundedReLU, BoundedGELU} - {kind}
    assert _count(model, kind) == 5  # stem, then per block: after conv1 and after the sum
    assert all(_count(model, o) == 0 for o in others)
    if kind is not nn.ReLU:
        act = next(m for m in model.modules() if isinstance(m, kind))
        assert act(torch.tensor([-100.0, 1.0, 100.0])).max().item() == 3.0


def _trace(model: nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: order.append(type(m).__name__))
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.ReLU | BoundedReLU)
    ]
    model(x)
    for h in hooks:
        h.remove()
    return order


def test_order_inversion_all_and_reference():
    x = torch.randn(1, 1, 8, 8)
    std = _trace(build_model(ModelConfig(arch="smallnet", shortcut="pad"), 1, 10), x)
    full = _trace(build_model(ModelConfig(arch="smallnet", shortcut="pad", order="act-bn"), 1, 10), x)
    ref = _trace(
        build_model(ModelConfig(arch="smallnet", shortcut="pad", order="act-bn", order_scope="reference"), 1, 10), x
    )
    block_std = ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    assert std == ["Conv2d", "BatchNorm2d", "ReLU", *block_std, *block_std]
    # Reference: stem and first conv of each block inverted, second conv unchanged.
    block_ref = ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "BatchNorm2d", "ReLU"]
    assert ref == ["Conv2d", "ReLU", "BatchNorm2d", *block_ref, *block_ref]
    # All: every conv is followed by its activation before BN.
    block_all = ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "ReLU"]
    assert full == ["Conv2d", "ReLU", "BatchNorm2d", *block_all, *block_all]


def test_nan_filter_after_every_activation_and_before_classifier():
    model = build_model(ModelConfig(arch="resnet20", activation="relu6", nan_filter=True), 3, 10)
    acts = _count(model, BoundedReLU)
    assert _count(model, NanFilter) == acts + 1
    assert isinstance(model.filter, NanFilter)
    plain = build_model(ModelConfig(arch="resnet20", activation="relu6"), 3, 10)
    assert _count(plain, NanFilter) == 0
    # A NaN written into a conv output does not reach the logits with the filter, and does without it.
    for m, finite in ((model, True), (plain, False)):
        m.eval()
        first = conv_layers(m)[3][1]
        h = first.register_forward_hook(lambda mod, i, o: o.index_put((torch.tensor([0]),), torch.tensor(float("nan"))))
        y = m(torch.randn(2, 3, 32, 32))
        h.remove()
        assert bool(torch.isfinite(y).all()) is finite


def test_bn_affine_option():
    on = build_model(ModelConfig(arch="smallnet"), 1, 10)
    off = build_model(ModelConfig(arch="smallnet", bn_affine=False), 1, 10)
    bns_off = [m for m in off.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns_off and all(m.weight is None and m.bias is None for m in bns_off)
    assert all(m.weight is not None for m in on.modules() if isinstance(m, nn.BatchNorm2d))
    n_on = sum(p.numel() for p in on.parameters())
    n_off = sum(p.numel() for p in off.parameters())
    assert n_on - n_off == 2 * sum(m.num_features for m in bns_off)


def test_bad_option_is_a_config_error():
    with pytest.raises(ConfigError, match="activation"):
        ModelConfig(activation="tanh")
    with pytest.raises(ConfigError, match="model: activations: unknown key"):
        ModelConfig.from_dict({"arch": "resnet20", "activations": "relu"})
