"""The resilience benchmark suite's models (Bolchini et al., IEEE TCAD 2026; GitHub cad-polito-it/dnn-benchmarks).

16 PyTorch models on CIFAR-10, CIFAR-100 and GTSRB with exactly the suite's module names and tensor shapes, so
its released weights load unchanged and its released fault lists address them row by row. A model is named
``<dataset>/<arch>`` (``cifar10/resnet20``, ``gtsrb/vgg11_bn``); :func:`build` makes it, plain or hardened:

    from diehardlab.hardening.zoo import build
    net = build("cifar10/resnet20")                                  # the suite's ResNet-20
    hard = build("cifar10/resnet20", ModelConfig(activation="relu6", order="act-bn", nan_filter=True))

The same names work as ``arch`` of a ``[model]`` table (``diehard train``) and in checkpoint folders
(``diehard zoo import``). One module per family: :mod:`.resnet`, :mod:`.mobilenet`, :mod:`.vgg`,
:mod:`.densenet`, :mod:`.googlenet`; the hardening options are in :mod:`.common`.

Facts kept per model (from the suite's repository and tables): the parameter count (Table IV), the number of
rows of its released fault list (Table V's sample size), the file names of its released weights and list,
and the top-1 accuracy its README reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diehardlab.errors import ConfigError

# The suite's input normalisation per dataset (its README); GTSRB images are also resized to 50x50.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": (
        (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
    ),
    "gtsrb": ((0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)),
}
CLASSES = {"cifar10": 10, "cifar100": 100, "gtsrb": 43}
IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "gtsrb": 50}
TEST_IMAGES = {"cifar10": 10000, "cifar100": 10000, "gtsrb": 12630}


@dataclass(frozen=True)
class ZooEntry:
    dataset: str
    arch: str
    family: str  # the module that builds it
    parameters: int  # all trainable parameters (the suite's Table IV)
    table_v: int | None  # rows of the suite's released fault list (its Table V sample size); None: no list
    suite_top1: float | None  # top-1 accuracy (%) the suite's README reports for its weights
    weights: str | None  # file name of the released weights in the suite's repository
    fault_list: str | None  # file name of the released fault list

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.arch}"

    @property
    def num_classes(self) -> int:
        return CLASSES[self.dataset]

    @property
    def image_size(self) -> int:
        return IMAGE_SIZE[self.dataset]

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return NORMALISATION[self.dataset]


# One row per model; "-" where the suite released no list or weights (ResNet-56 is in its README only).
_TABLE = """
dataset  arch         family     parameters  table_v  top1  weights                   fault_list
cifar10  resnet20     resnet         269722    16627  91.5  ResNet20.th               ResNet20_FL.csv
cifar10  resnet32     resnet         464154    16630  92.3  ResNet32.th               ResNet32_FL.csv
cifar10  resnet44     resnet         658586    16634  92.8  ResNet44.th               ResNet44_FL.csv
cifar10  resnet56     resnet         853018        -  93.3  -                         -
cifar10  mobilenetv2  mobilenet     2296922    16640  91.7  MobileNetV2.pt            Mobilenetv2_FL.csv
cifar10  vgg11_bn     vgg          28149514    16642  91.3  Vgg11_bn.pt               Vgg11_bn_FL.csv
cifar10  vgg13_bn     vgg          28334410    16639  93.8  Vgg13_bn.pt               Vgg13_bn_FL.csv
cifar10  densenet121  densenet      6956426    16628  93.2  DenseNet121.pt            DenseNet121_FL.csv
cifar10  densenet161  densenet     26482570    16677  93.1  DenseNet161.pt            DenseNet161_FL.csv
cifar10  googlenet    googlenet     5490986    16640  92.2  GoogLeNet.pt              GoogLeNet_FL.csv
cifar100 resnet18     resnet       11220132    16644  76.2  ResNet18_CIFAR100.pth     ResNet18_CIFAR100_FL.csv
cifar100 densenet121  densenet      7048548    16638  78.7  DenseNet121_CIFAR100.pth  DenseNet121_CIFAR100_FL.csv
cifar100 googlenet    googlenet     6402564    16635  76.3  GoogLeNet_CIFAR100.pth    GoogLeNet_CIFAR100_FL.csv
gtsrb    resnet20     resnet         271867    16629  94.3  ResNet20_GTSRB.pt         ResNet20_GTSRB_FL.csv
gtsrb    vgg11_bn     vgg          28284715    16641  95.5  Vgg11_bn_GTSRB.pt         Vgg11_bn_GTSRB_FL.csv
gtsrb    densenet121  densenet      6990123    16650  96.5  DenseNet121_GTSRB.pt      DenseNet121_GTSRB_FL.csv
"""


def _row(line: str) -> ZooEntry:
    d, a, fam, params, table_v, top1, weights, flist = line.split()
    none = lambda v: None if v == "-" else v  # noqa: E731
    return ZooEntry(
        d, a, fam, int(params), int(table_v) if table_v != "-" else None, float(top1), none(weights), none(flist)
    )


ENTRIES: dict[str, ZooEntry] = {e.name: e for e in map(_row, _TABLE.strip().splitlines()[1:])}

# Spellings users bring from the suite's file and class names.
_ALIASES = {"mobilenet_v2": "mobilenetv2", "vgg11": "vgg11_bn", "vgg13": "vgg13_bn"}


def _builder(e: ZooEntry) -> Callable:
    """The function ``(num_classes, Hardening) -> nn.Module`` of ``e``, from its family's module. The suite's
    CIFAR-10 VGG, DenseNet-121 and GoogLeNet are torchvision's; its CIFAR-100/GTSRB ones are other codebases'."""
    from diehardlab.hardening.zoo import densenet, googlenet, mobilenet, resnet, vgg

    tv = e.dataset == "cifar10"
    if e.family == "resnet":
        return resnet.resnet18 if e.arch == "resnet18" else resnet.cifar_resnet(int(e.arch.removeprefix("resnet")))
    if e.family == "vgg":
        return vgg.vgg(e.arch, adaptive_pool=tv)
    if e.family == "densenet":
        if e.arch == "densenet161":
            return densenet.densenet_tv(48, (6, 12, 36, 24), 96)
        return densenet.densenet_tv(32, (6, 12, 24, 16), 64) if tv else densenet.densenet_bc(32, (6, 12, 24, 16))
    if e.family == "googlenet":
        return googlenet.googlenet_tv if tv else googlenet.googlenet_c100
    return mobilenet.mobilenetv2


def names() -> list[str]:
    return list(ENTRIES)


def is_zoo_name(name: str) -> bool:
    return "/" in str(name)


def entry(name: str) -> ZooEntry:
    """The zoo entry ``<dataset>/<arch>``; a ConfigError lists the names when there is none."""
    key = str(name).strip().lower()
    dataset, _, arch = key.partition("/")
    key = f"{dataset}/{_ALIASES.get(arch, arch)}"
    if key not in ENTRIES:
        raise ConfigError(f"no zoo model {name!r}; the zoo has {', '.join(ENTRIES)} ('diehard zoo list')")
    return ENTRIES[key]


def resolve(arch: str, dataset: str) -> ZooEntry:
    """The entry for ``--arch`` and ``--dataset`` as a user spells them (``ResNet20``, ``CIFAR10``)."""
    d = str(dataset).strip().lower().replace("-", "")
    a = str(arch).strip().lower().replace("-", "")
    return entry(f"{d}/{a}")


def build(name: str, cfg: Any = None, num_classes: int | None = None) -> Any:
    """The zoo model ``name`` (an ``nn.Module``) with the hardening options of ``cfg``, a ``ModelConfig``
    (default: the suite's plain model)."""
    from diehardlab.hardening.zoo.common import Hardening

    e = entry(name)
    if num_classes is not None and num_classes != e.num_classes:
        raise ConfigError(f"zoo model {e.name} has {e.num_classes} classes, not {num_classes}")
    return _builder(e)(e.num_classes, Hardening(cfg))
