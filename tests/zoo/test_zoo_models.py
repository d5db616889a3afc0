"""The zoo: the benchmark suite's 16 models with its exact names and shapes, hardened forms, released weights."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from diehardlab.hardening.checkpoint import load_model
from diehardlab.hardening.models import BoundedReLU, ModelConfig, NanFilter, build_model
from diehardlab.hardening.zoo import ENTRIES, build, entry
from diehardlab.hardening.zoo.cli import main as zoo_main
from diehardlab.hardening.zoo.common import PreActBatchNorm2d
from torch import nn

# The suite's Table IV parameter counts and Table III layer counts the issue quotes (architectures.json has all).
TABLE_IV = {
    "cifar10/resnet20": 269_722,
    "cifar10/resnet32": 464_154,
    "cifar10/resnet44": 658_586,
    "gtsrb/resnet20": 271_867,
}
TABLE_III = {
    "cifar10/resnet20": (19, 1),
    "cifar10/densenet121": (120, 1),
    "cifar10/mobilenetv2": (57, 1),
    "cifar10/vgg11_bn": (8, 3),
}


def _shapes(named) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in named}


def test_every_model_has_the_suites_names_and_shapes(suite_data):
    arch = json.loads((suite_data / "architectures.json").read_text())
    assert sorted(arch) == sorted(ENTRIES)
    for name, facts in arch.items():
        with torch.device("meta"):  # shapes only
            model = build(name)
        # same names, same shapes, same order (a released state dict loads; a fault list's TensorIndex fits)
        assert list(_shapes(model.named_parameters()).items()) == list(facts["parameters"].items()), name
        assert _shapes(model.named_buffers()) == facts["buffers"], name
        total = sum(p.numel() for p in model.parameters())
        assert total == facts["parameters_total"] == entry(name).parameters, name
        layers = [
            {"module": n, "type": type(m).__name__, "weight": list(m.weight.shape)}
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        assert layers == facts["injectable"], name
        if name in TABLE_III:
            kinds = [x["type"] for x in layers]
            assert (kinds.count("Conv2d"), kinds.count("Linear")) == TABLE_III[name]
    assert {k: ENTRIES[k].parameters for k in TABLE_IV} == TABLE_IV


HARD = ModelConfig(activation="relu6", act_bound=4.0, order="act-bn", order_scope="all", nan_filter=True)


def test_hardened_forms_keep_every_parameter_name():
    for name, e in ENTRIES.items():
        with torch.device("meta"):
            plain = build(name)
            hard = build_model(replace(HARD, arch=name), 3, e.num_classes)
        assert _shapes(hard.state_dict().items()) == _shapes(plain.state_dict().items()), name
        bns = [m for m in hard.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(isinstance(m, PreActBatchNorm2d) for m in bns), name  # an activation before every BN
        acts = [m for m in hard.modules() if isinstance(m, BoundedReLU)]
        assert acts and not any(isinstance(m, nn.ReLU) for m in hard.modules()), name
        assert all(a.bound == 4.0 for a in acts) and any(isinstance(m, NanFilter) for m in hard.modules()), name
    # the reference scope inverts only the batch norms an activation follows: all of them in VGG, GoogLeNet and the
    # torchvision DenseNets; not a residual block's second one, a projection shortcut or a transition elsewhere
    for name, partial in (
        ("cifar10/resnet20", True),
        ("cifar10/mobilenetv2", True),
        ("cifar100/densenet121", True),
        ("cifar10/densenet121", False),
        ("gtsrb/vgg11_bn", False),
        ("cifar100/googlenet", False),
    ):
        with torch.device("meta"):
            ref = build_model(
                ModelConfig(arch=name, order="act-bn", order_scope="reference"), 3, entry(name).num_classes
            )
        inverted = [m for m in ref.modules() if isinstance(m, PreActBatchNorm2d)]
        every = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
        assert 0 < len(inverted) <= len(every) and (len(inverted) < len(every)) == partial, name


def test_hardened_resnet20_computes_differently_and_filters_nan():
    from tests.sfi.conftest import randomise_bn

    torch.manual_seed(0)
    plain = build("cifar10/resnet20").eval()
    randomise_bn(plain, torch.Generator().manual_seed(1))
    hard = build_model(replace(HARD, arch="cifar10/resnet20"), 3, 10).eval()
    hard.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        assert not torch.equal(hard(x), plain(x))
        # a NaN weight poisons the plain model's output; the NaN filters keep the hardened one finite
        for m in (plain, hard):
            m.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
        assert not torch.isfinite(plain(x)).all() and torch.isfinite(hard(x)).all()


def test_import_the_suites_resnet20_and_its_top1(suite_data, foolbox_images, tmp_path, capsys):
    out = tmp_path / "r20"
    args = ["import", str(suite_data / "ResNet20.th"), "--arch", "ResNet20", "--dataset", "CIFAR10", "--out", str(out)]
    assert zoo_main([*args, "--data-dir", str(foolbox_images)]) == 0
    text = capsys.readouterr().out
    assert "269,722 parameters" in text and "best_prec1=91.78" in text
    # the first 20 CIFAR-10 test images: the suite's ResNet-20 gets all but image 12 (a 5 taken for a 4)
    assert "19/20 = 95.00 %" in text
    loaded = load_model(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["arch"] == "cifar10/resnet20" and cfg["normalisation"]["fixed"] is True
    assert cfg["source"]["sha256"] and cfg["source"]["entries"]["best_prec1"] == pytest.approx(91.78, abs=1e-3)
    # the checkpoint computes exactly what the released state dict computes in the suite's own module layout
    state = torch.load(suite_data / "ResNet20.th", map_location="cpu", weights_only=True)["state_dict"]
    direct = build("cifar10/resnet20").eval()
    direct.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), direct(x))


def test_zoo_list_prints_the_suites_counts(capsys):
    assert zoo_main(["list"]) == 0
    text = capsys.readouterr().out
    assert "cifar10/resnet20            10   32x32      269,722    19+1       16627" in text
    assert "gtsrb/densenet121           43   50x50    6,990,123   120+1       16650" in text
    assert "cifar10   mean (0.4914, 0.4822, 0.4465)  std (0.2023, 0.1994, 0.201)" in text
    assert zoo_main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 16 and {r["model"] for r in rows} == set(ENTRIES)
