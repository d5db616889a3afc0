"""The benchmark suite's lists and results: read and written as they are, checked against the zoo models, run in
the arithmetic the published outcomes imply, compared fault by fault; Table V from the plan."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diehardlab.hardening.numerics import parse_numerics
from diehardlab.hardening.sfi import faultlist
from diehardlab.hardening.sfi.compare import infer_numerics, load_side
from diehardlab.hardening.sfi.engine import Images, Injector
from diehardlab.hardening.sfi.faultlist import Fault, draw
from diehardlab.hardening.sfi.plan import make_plan
from diehardlab.hardening.zoo import ENTRIES, build

from diehardlab.cli import main
from diehardlab.errors import ConfigError, DataError
from tests.conftest import SHARED_SUITE

# the released lists in ../shared/data/dnn-benchmarks and their zoo models
SHARED_LISTS = {
    "ResNet20_FL.csv": "cifar10/resnet20",
    "Mobilenetv2_FL.csv": "cifar10/mobilenetv2",
    "DenseNet121_FL.csv": "cifar10/densenet121",
    "Vgg11_bn_FL.csv": "cifar10/vgg11_bn",
    "GoogLeNet_FL.csv": "cifar10/googlenet",
    "ResNet18_CIFAR100_FL.csv": "cifar100/resnet18",
    "ResNet20_GTSRB_FL.csv": "gtsrb/resnet20",
}


def _per_layer(faults: list[Fault]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in faults:
        counts[f.module] = counts.get(f.module, 0) + 1
    return counts


def _check_list(path: Path, name: str) -> None:
    read = faultlist.read_list(path)
    with torch.device("meta"):
        model = build(name)
    faultlist.check_against(read.faults, model, lines=read.rows_line)  # every row addresses an element
    plan = make_plan(model, "suite")
    assert plan.total == len(read.faults) == ENTRIES[name].table_v
    assert {s.layer: s.n for s in plan.strata} == _per_layer(read.faults)  # layer by layer
    assert read.form == "suite-results" and (read.counts[:, 0] == read.counts[0, 0]).all()


def test_the_resnet20_list_fits_the_zoo_model_and_the_plan(suite_data):
    _check_list(suite_data / "ResNet20_FL.csv", "cifar10/resnet20")


@pytest.mark.needs_shared
@pytest.mark.parametrize("name", sorted(set(SHARED_LISTS) - {"ResNet20_FL.csv"}))
def test_every_shared_list_fits_its_zoo_model_and_the_plan(name):
    if SHARED_SUITE is None:
        pytest.skip("../shared/data/dnn-benchmarks is not beside this checkout")
    _check_list(SHARED_SUITE / name, SHARED_LISTS[name])


def test_table_v_for_every_zoo_model_with_a_list():
    for name, e in ENTRIES.items():
        if e.table_v:
            with torch.device("meta"):
                assert make_plan(build(name), "suite").total == e.table_v, name


def _sfiadvancedmodels_reads(path: Path) -> list[tuple]:
    """SFIadvancedmodels' own reading (FaultListManager.get_weight_fault_list): rows after the header, the layer
    in column 1 (it injects <layer>.weight), make_tuple of column 2, the bit from the *last* column."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return [(int(r[0]), r[1] + ".weight", ast.literal_eval(r[2]), int(r[-1])) for r in rows]


def test_lists_round_trip_in_every_form(suite_data, tmp_path):
    src = suite_data / "ResNet20_FL.csv"
    read = faultlist.read_list(src)
    out = tmp_path / "again.csv"
    faultlist.write_csv(read.faults, out, form="suite-results", counts=read.counts)
    assert out.read_bytes() == src.read_bytes()  # byte for byte
    want = [(f.injection, f.tensor, f.index, f.bit) for f in read.faults]
    for form in ("suite", "diehardlab"):
        faultlist.write_csv(read.faults, out, form=form)
        back = faultlist.read_list(out)
        assert back.faults == read.faults and back.form == form
        assert _sfiadvancedmodels_reads(out) == want  # SFIadvancedmodels reads what we write, unchanged
    # an SFIadvancedmodels list as its csv.writer writes it (\r\n), and an older one naming the parameter
    crlf = tmp_path / "sfi.csv"
    crlf.write_bytes(b'Injection,Layer,TensorIndex,Bit\r\n0,layer1.0.conv1,"(3, 0, 2, 1)",30\r\n1,fc.bias,"(2,)",3\r\n')
    a, b = faultlist.read_csv(crlf)
    assert (a.tensor, a.index, a.bit, b.tensor, b.index) == ("layer1.0.conv1.weight", (3, 0, 2, 1), 30, "fc.bias", (2,))
    with pytest.raises(ConfigError, match="suite's form"):  # a bias fault is not in the suite's form
        faultlist.write_csv([a, b], out, form="suite")


@pytest.mark.parametrize(
    "cut, match",
    [
        (lambda t: "\n".join(t.split("\n")[:201]) + '\n9,conv1,"(1, 0, 0, 0)",15,10000', r"line 202: 5 fields where"),
        (lambda t: t[: t.index('"(', 9000) + 6], r"line \d+: unexpected end of data .*no row of it was used"),
        (lambda t: t[: t.index("9071") + 2], r"line 4: masked \+ non_critical \+ critical = 1019, but 2 other rows"),
        (lambda t: t.replace('"(3, 0, 2, 1)"', '"(3, 0, 2"', 1), r"line 2: column TensorIndex"),
        (lambda t: t.replace(",15,10000,14,", ",15,1e4,14,", 1), r"line 2: column n_injections: '1e4'"),
    ],
)
def test_a_truncated_or_damaged_list_is_refused(suite_data, tmp_path, cut, match):
    bad = tmp_path / "cut.csv"
    bad.write_text(cut((suite_data / "ResNet20_FL.csv").read_text()))
    with pytest.raises(DataError, match=match):
        faultlist.read_list(bad)


@pytest.mark.parametrize("spec", ["fp32", "tf32", "layer2.*=tf32,*=fp32", "conv1=tf32,fc=tf32,*=fp32"])
def test_cached_engine_is_bit_identical_to_a_full_forward_under_every_map(tiny_resnet, tiny_images, spec):
    x, y = tiny_images
    imgs = Images(x, y, [str(i) for i in range(len(y))])
    faults = draw(make_plan(tiny_resnet, "network", error=0.15, fault_model="bitflip"), seed=3)[:150]
    faults.append(Fault(len(faults), "layer1.conv2.output", (1, 2, 3), 27))  # an activation fault too
    policy = parse_numerics(spec)
    cached = Injector(tiny_resnet, imgs, batch_size=5, engine="cached", numerics=policy).run(faults)
    naive = Injector(tiny_resnet, imgs, batch_size=5, engine="naive", numerics=policy).run(faults)
    np.testing.assert_array_equal(cached, naive)
    assert (cached.max(axis=1) == 0).any() and (cached.max(axis=1) > 0).any()
    # low-mantissa flips of a TF32 layer's weights are masked on every image
    low = [i for i, f in enumerate(faults) if f.bit < 12 and f.tensor.startswith("layer2.")]
    if policy.arithmetic_for("layer2.conv1") == "tf32":
        assert low and (cached[low] == 0).all()


def _subset(path: Path, out: Path) -> Path:
    """40 rows of the published list: 20 low-mantissa flips in layer3 and layer1 each (what tells the
    arithmetic apart), in the suite's 8-column form."""
    read = faultlist.read_list(path)
    pick = [i for i, f in enumerate(read.faults) if f.bit < 12 and f.module.startswith("layer3.")][:20]
    pick += [i for i, f in enumerate(read.faults) if f.bit < 12 and f.module.startswith("layer1.")][:20]
    faultlist.write_csv([read.faults[i] for i in pick], out, "suite-results", read.counts[pick])
    return out


def test_run_the_suites_list_in_its_arithmetic_and_compare(suite_data, foolbox_images, tmp_path, capsys):
    published = suite_data / "ResNet20_FL.csv"
    ckpt = tmp_path / "r20"
    assert (
        main(
            [
                "zoo",
                "import",
                str(suite_data / "ResNet20.th"),
                "--arch",
                "resnet20",
                "--dataset",
                "cifar10",
                "--out",
                str(ckpt),
            ]
        )
        == 0
    )
    sub = _subset(published, tmp_path / "sub.csv")
    assert main(["sfi", "compare", str(sub), str(published), "--map-out", str(tmp_path / "map.toml")]) == 0
    text = capsys.readouterr().out
    assert "inferred map: --numerics 'layer3.*=tf32,*=fp32'" in text  # from the published list alone
    for numerics, want in ((str(tmp_path / "map.toml"), "100.00 %"), ("fp32", None)):
        out = tmp_path / f"run-{Path(numerics).stem}"
        argv = [
            "sfi",
            "run",
            str(ckpt),
            "--data-dir",
            str(foolbox_images),
            "--fault-list",
            str(sub),
            "--numerics",
            numerics,
            "--threads",
            "1",
            "--out",
            str(out),
        ]
        assert main(argv) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["numerics"]["layers"]["layer3.2.conv2"] == ("tf32" if want else "fp32")
        assert run["numerics"]["layers"]["layer1.0.conv1"] == "fp32"
        assert main(["sfi", "compare", str(out), str(published)]) == 0
        text = capsys.readouterr().out
        assert "golden accuracy 95.00 %" in text  # 19 of the 20 images
        consistent = text.split("consistent: ")[1].split("\n")[0]
        if want:
            assert consistent.endswith(want)
        else:  # in FP32 the layer3 low-bit flips change the scores: published as masked on all 10,000 images
            assert not consistent.endswith("100.00 %") and "published none of 10000" in text
        ours = faultlist.read_list(out / "suite_results.csv")  # the suite's 8-column form, 20 images per fault
        assert ours.form == "suite-results" and (ours.counts[:, 0] == 20).all()
        assert ours.faults == faultlist.read_list(sub).faults
    side = load_side(published, "published")
    policy, evidence = infer_numerics(side)
    assert policy.spec() == "layer3.*=tf32,*=fp32" and len(evidence) == 20


def test_rows_that_do_not_address_the_model_are_named(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text('Injection,Layer,TensorIndex,Bit\n0,conv1,"(3, 0, 2, 1)",15\n1,layer1.0.conv1,"(3, 0, 2, 7)",1\n')
    read = faultlist.read_list(path)
    with torch.device("meta"):
        model = build("cifar10/resnet20")
    with pytest.raises(
        ConfigError, match=r"line 3: index \(3, 0, 2, 7\) is outside parameter layer1\.0\.conv1\.weight"
    ):
        faultlist.check_against(read.faults, model, lines=read.rows_line)
    path.write_text('Injection,Layer,TensorIndex,Bit\n0,conv1,"(3, 0, 2, 1)",32\n')
    with pytest.raises(DataError, match=r"line 2: column Bit: '32'"):
        faultlist.read_list(path)
