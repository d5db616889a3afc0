"""The torch.fx hardening rewrite (diehardlab.hardening.rewrite) on the project's models and on small models
with the zoo's constructs (tests/hardening/zoo_like.py).

For each model the test knows how many activations must be bounded, how many conv -> BN -> act chains
inverted and how many BN left alone, and checks the hardened graph against the original edge by edge: apart
from the inversions, the NaN filters and the activations turned into bounded ones, every node reads exactly
what it read before. Phase 2 adds the suite's zoo models to ``CASES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from diehardlab.hardening.models import BoundedGELU, BoundedReLU, ModelConfig, NanFilter, build_model
from diehardlab.hardening.rewrite import CONTAINER, Recipe, calibrate, harden, rebuild, sites_of, trace
from diehardlab.hardening.sfi.zoo import LeNet5
from diehardlab.hardening.zoo import build as zoo_build
from torch import fx, nn

from diehardlab.errors import ConfigError, DataError
from tests.hardening import zoo_like


@dataclass(frozen=True)
class Expect:
    bounded: int  # ReLU/GELU sites made bounded
    already: int  # activation sites bounded already (ReLU6...) or not handled: skipped
    inverted: int  # conv -> BN -> act chains inverted
    bn_skipped: int  # BN nodes left in place, with a reason
    filters: int  # NaN filters inserted (after activations and on the classifier's input)


def _model(cfg: ModelConfig, cin: int) -> Callable[[], nn.Module]:
    return lambda: build_model(cfg, cin, 10)


CASES = [
    pytest.param(_model(ModelConfig(arch="smallnet", width=4), 1), (6, 1, 8, 8), Expect(5, 0, 3, 3, 6), id="smallnet"),
    pytest.param(
        _model(ModelConfig(arch="resnet20", shortcut="pad", width=4), 3),
        (4, 3, 8, 8),
        Expect(19, 0, 10, 9, 20),
        id="resnet20-pad",
    ),
    pytest.param(LeNet5, (4, 3, 32, 32), Expect(4, 0, 0, 0, 4), id="lenet5"),
    pytest.param(zoo_like.TinyResNet, (4, 3, 8, 8), Expect(5, 0, 3, 3, 6), id="resnet-torchvision"),
    pytest.param(zoo_like.TinyMobileNetV2, (4, 3, 8, 8), Expect(0, 7, 7, 3, 8), id="mobilenetv2"),
    pytest.param(zoo_like.TinyDenseNet, (4, 3, 8, 8), Expect(6, 0, 2, 4, 7), id="densenet"),
    pytest.param(zoo_like.TinyGoogLeNet, (4, 3, 8, 8), Expect(7, 0, 7, 0, 8), id="googlenet"),
    pytest.param(zoo_like.TinyVGGBN, (4, 3, 8, 8), Expect(5, 0, 3, 0, 6), id="vgg-bn"),
    pytest.param(zoo_like.TinyGELUNet, (4, 3, 8, 8), Expect(2, 0, 1, 0, 3), id="gelu"),
]


def _zoo(name: str) -> Callable[[], nn.Module]:
    return lambda: zoo_build(name)


# The suite's models, counted by hand from hardening/zoo/*.py (the suite's definitions). Rules: every ReLU call
# is a site; a BN is inverted when it reads a conv that nothing else reads and only an activation reads it; every
# activation gets a NaN filter, and one more goes on the classifier's input.
CIFAR = (3, 3, 32, 32)  # three CIFAR-size images: calibrated in batches of 2 and 1
ZOO_CASES = [
    # stem conv-BN-ReLU (inverted) + 9 blocks: conv1-bn1-relu1 (inverted), bn2 feeds the sum (skipped), relu2
    # after the sum: 19 ReLUs, 10 inverted, 9 BN skipped, 20 filters.
    pytest.param(_zoo("cifar10/resnet20"), CIFAR, Expect(19, 0, 10, 9, 20), id="zoo-cifar10-resnet20"),
    # stem (1 ReLU, inverted) + 8 blocks (2 ReLUs, 1 inverted, 1 BN before the sum) + 3 projection shortcuts
    # (conv-BN into the sum: skipped): 17 ReLUs, 9 inverted, 11 skipped, 18 filters.
    pytest.param(_zoo("cifar100/resnet18"), CIFAR, Expect(17, 0, 9, 11, 18), id="zoo-cifar100-resnet18"),
    # The suite's MobileNetV2 is kuangliu's, with ReLU (not torchvision's ReLU6: that one is the mobilenetv2 case
    # above, left bounded at 6). Stem and head conv-BN-ReLU (inverted), 17 blocks with expand and depthwise
    # conv-BN-ReLU (inverted) and a linear projection BN (skipped), 4 projection shortcuts (BN skipped):
    # 36 ReLUs, 36 inverted, 21 skipped, 37 filters (57 convs, 57 BNs).
    pytest.param(_zoo("cifar10/mobilenetv2"), CIFAR, Expect(36, 0, 36, 21, 37), id="zoo-cifar10-mobilenetv2"),
    # torchvision layout, blocks 6/12/24/16 = 58 dense layers of BN-ReLU-1x1 conv-BN-ReLU-3x3 conv: norm1 reads
    # the concatenation (skipped), norm2 reads the 1x1 conv (inverted); the stem conv0-norm0-relu0 (inverted); 3
    # transitions BN-ReLU-conv (BN reads a cat: skipped); norm5 + ReLU (skipped): 121 ReLUs, 59 inverted, 62 skipped.
    pytest.param(_zoo("cifar10/densenet121"), CIFAR, Expect(121, 0, 59, 62, 122), id="zoo-cifar10-densenet121"),
    # pytorch-cifar100 layout: the same 58 bottlenecks (the first one's BN reads conv1, which the cat reads too:
    # skipped), transitions BN-conv-pool without a ReLU (3 BN skipped), final BN-ReLU (skipped): 117 ReLUs,
    # 58 inverted, 62 skipped.
    pytest.param(_zoo("cifar100/densenet121"), CIFAR, Expect(117, 0, 58, 62, 118), id="zoo-cifar100-densenet121"),
    # 8 conv-BN-ReLU (inverted) and 2 ReLUs in the classifier; the last linear reads a dropout: 10 ReLUs, 11 filters.
    pytest.param(_zoo("cifar10/vgg11_bn"), CIFAR, Expect(10, 0, 8, 0, 11), id="zoo-cifar10-vgg11_bn"),
    # BasicConv2d (conv-BN-ReLU, all inverted): the stem and 6 per Inception (branch1 1, branch2 2, branch3 2,
    # branch4 1 after its pool) x 9 = 55.
    pytest.param(_zoo("cifar10/googlenet"), CIFAR, Expect(55, 0, 55, 0, 56), id="zoo-cifar10-googlenet"),
]
CASES += ZOO_CASES

ALL_ON = Recipe(name="all", percentile=100.0, order_inversion=True)


def _randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so an inversion or a wrong rebuild shows in the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _relu_like(n: fx.Node, mods: dict[str, nn.Module]) -> bool:
    """The test's own oracle of what the rewrite must bound."""
    if n.op == "call_module":
        return type(mods[str(n.target)]) in (nn.ReLU, nn.GELU)
    if n.op == "call_function":
        return n.target in (F.relu, torch.relu, torch.relu_, F.gelu)
    return n.op == "call_method" and n.target in ("relu", "relu_")


def _edges(gm: fx.GraphModule, original: bool) -> dict[str, tuple[str, tuple[str, ...]]]:
    """node -> (what it computes, the nodes it reads), NaN filters looked through, activations as 'ACT'."""
    mods = dict(gm.named_modules())
    alias: dict[fx.Node, fx.Node] = {}
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for n in gm.graph.nodes:
        added = n.op == "call_module" and str(n.target).startswith(CONTAINER + ".")
        if added and isinstance(mods[str(n.target)], NanFilter):
            alias[n] = alias.get(n.args[0], n.args[0])
            continue
        if (original and _relu_like(n, mods)) or (added and isinstance(mods[str(n.target)], BoundedReLU | BoundedGELU)):
            kind = "ACT"
        else:
            target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", repr(n.target))
            kind = f"{n.op}:{target}"
        out[n.name] = (kind, tuple(alias.get(a, a).name for a in n.all_input_nodes))
    return out


@pytest.mark.parametrize(("factory", "shape", "expect"), CASES)
def test_every_change_is_applied_where_it_should_be_and_nowhere_else(factory, shape, expect) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(factory())
    h = harden(model, ALL_ON)
    by = {(c.kind, c.action): sum(1 for d in h.changes if (d.kind, d.action) == (c.kind, c.action)) for c in h.changes}
    assert by.get(("activation", "bounded"), 0) == expect.bounded, h.changes
    assert by.get(("activation", "skipped"), 0) == expect.already, h.changes
    assert by.get(("order", "inverted"), 0) == expect.inverted, h.changes
    assert by.get(("order", "skipped"), 0) == expect.bn_skipped, h.changes
    filters = [m for m in sites_of(h.model).values() if isinstance(m, NanFilter)]
    assert len(filters) == expect.filters
    assert all(c.detail for c in h.changes)  # every change and every skip says what and why

    # Edge by edge: the original with the reported inversions applied must be the hardened graph.
    orig_gm = trace(model)
    expected = _edges(orig_gm, original=True)
    users = {n.name: [u.name for u in n.users] for n in orig_gm.graph.nodes}
    for c in h.changes:
        if c.kind == "order" and c.action == "inverted":
            bn = c.site
            (act,) = users[bn]
            conv = expected[bn][1][0]
            for name, (kind, ins) in list(expected.items()):
                if name != bn and act in ins:
                    expected[name] = (kind, tuple(bn if i == act else i for i in ins))
            expected[act] = (expected[act][0], (conv, *expected[act][1][1:]))
            expected[bn] = (expected[bn][0], (act, *expected[bn][1][1:]))
    assert _edges(h.model, original=False) == expected

    # A NaN filter is the only reader of every activation, and the classifier reads one.
    mods = dict(h.model.named_modules())
    nodes = {n.name: n for n in h.model.graph.nodes}
    for c in h.changes:
        if c.kind == "activation":
            (reader,) = nodes[c.site].users
            assert isinstance(mods[str(reader.target)], NanFilter), c
    linears = [n for n in h.model.graph.nodes if n.op == "call_module" and isinstance(mods[str(n.target)], nn.Linear)]
    assert isinstance(mods[str(linears[-1].args[0].target)], NanFilter)
    assert not any(isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d) for m in sites_of(h.model).values())

    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.isfinite(h.model(x)).all()


@pytest.mark.parametrize(("factory", "shape", "expect"), CASES)
def test_bounds_above_every_activation_give_the_original_outputs(factory, shape, expect) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(factory())
    x = torch.randn(shape)
    h = harden(model, Recipe(name="max", percentile=100.0))
    batches = [x[:2], x[2:]]
    with torch.no_grad():
        stats = calibrate(h, batches, len(x))
        # In the batches the bounds were calibrated on: a convolution's last bits can depend on the batch it runs
        # in (the suite's ResNet-20 on this CPU: outputs differ by ~1e-5 between one batch of 3 and batches of 2
        # and 1), so an activation's maximum in other batches may be a few ulps higher than its bound.
        assert torch.equal(torch.cat([h.model(b) for b in batches]), torch.cat([model(b) for b in batches]))
    # Each bound is the largest value its activation took, and it bites beyond that.
    assert set(stats) == set(h.bounds)
    for site, info in stats.items():
        assert info["bound"] == info["max"] == h.bounds[site] or info["max"] <= 0
    if expect.bounded:
        with torch.no_grad():
            assert not torch.equal(h.model(x * 50), model(x * 50))

    # The checkpoint's record rebuilds the same graph on a fresh instance: same keys, same outputs.
    fresh = factory().eval()
    rebuilt = rebuild(fresh, h.record())
    rebuilt.load_state_dict(h.model.state_dict())
    assert sorted(rebuilt.state_dict()) == sorted(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), h.model(x))


def test_a_diehardnet_model_is_left_as_it_is() -> None:
    """Everything bounded and filtered already: the rewrite changes nothing and says why for each site."""
    cfg = ModelConfig(arch="smallnet", width=4, activation="relu6", order="act-bn", nan_filter=True)
    model = _randomise_bn(build_model(cfg, 1, 10))
    h = harden(model, Recipe(name="b"))
    assert {c.action for c in h.changes} == {"skipped"}
    assert not sites_of(h.model)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(h.model(x), model(x))


def test_a_relu_module_called_twice_gets_a_bound_per_call() -> None:
    model = _randomise_bn(zoo_like.TinyResNet())
    h = harden(model, Recipe(name="max", percentile=100.0, nan_filter=False))
    calibrate(h, [torch.randn(8, 3, 8, 8)], 8)
    assert {"layer1_relu", "layer1_relu_1"} <= set(h.bounds)
    assert h.bounds["layer1_relu"] != h.bounds["layer1_relu_1"]


def test_an_in_place_relu_read_again_is_skipped_with_the_reason() -> None:
    model = zoo_like.InPlaceReadAgain().eval()
    h = harden(model, Recipe(name="b"))
    (act,) = [c for c in h.changes if c.kind == "activation"]
    assert act.action == "skipped" and "in place" in act.detail and "also read by add" in act.detail
    assert [c.action for c in h.changes if c.kind == "nan-filter"] == ["inserted"]


def test_an_untraceable_model_gets_an_error_naming_the_construct() -> None:
    with pytest.raises(ConfigError) as err:
        harden(zoo_like.Wrapper(), Recipe(name="b"))
    msg = str(err.value)
    assert "zoo_like.py" in msg and "if x.mean() > 0:" in msg and "module inner" in msg, msg
    assert "control flow" in msg and "\n" not in msg


def test_a_rebuild_refuses_a_record_that_does_not_fit_the_model() -> None:
    h = harden(LeNet5().eval(), Recipe(name="c", bound="constant"))
    record = h.record()
    record["bounds"]["relu_9"] = 1.0
    with pytest.raises(DataError, match="relu_9"):
        rebuild(LeNet5().eval(), record)
    del record["bounds"]["relu_9"], record["bounds"]["relu"]
    with pytest.raises(DataError, match=r"relu .*no saved bound"):
        rebuild(LeNet5().eval(), record)
