"""Bad input for ``diehard sfi`` and ``diehard zoo``: one clear line, non-zero exit, no traceback, no run left."""

from __future__ import annotations

import re

import pytest

from diehardlab.errors import ConfigError, DataError
from tests.badinput.battery import check_refused

LIST_HEAD = "Injection,Layer,TensorIndex,Bit,n_injections,masked,non_critical,critical\n"


@pytest.fixture
def images(foolbox_images) -> list[str]:
    return ["--model", "cifar10/resnet20", "--data-dir", str(foolbox_images)]


# (index, bit and truncation errors of the reader and checker are tested in-process: tests/sfi/test_sfi_suite.py)
@pytest.mark.parametrize(
    "rows, names",
    [
        # a layer the model does not have: the row's line and what the model has
        (
            '0,conv1,"(3, 0, 2, 1)",15,10000,14,9985,1\n1,layer4.0.conv1,"(0, 0, 0, 0)",3,10000,0,1,9999\n',
            ["line 3", "layer4.0.conv1", "the model has conv1 (16, 3, 3, 3)"],
        ),
        # a list for another model (the suite's CIFAR-100 ResNet-18 names): refused before any run
        (
            '0,conv1.0,"(3, 0, 2, 1)",15,10000,14,9985,1\n'
            '1,conv2_x.0.residual_function.0,"(1, 2, 0, 0)",4,10000,0,1,9999\n',
            ["line 2", "2 of 2 rows do not fit: a list for another model"],
        ),
    ],
)
def test_sfi_run_refuses_a_fault_list_that_does_not_fit(tmp_path, images, rows, names):
    faults = tmp_path / "list.csv"
    faults.write_text(LIST_HEAD + rows)
    out = tmp_path / "out"
    check_refused(
        "sfi",
        "run",
        *images,
        "--faults",
        str(faults),
        "--out",
        str(out),
        names=[str(faults), *names],
        outputs=[out / "run.json", out / "outcomes.npy"],
    )


def test_sfi_run_refuses_bad_numerics(tmp_path, images, suite_data):
    out = tmp_path / "out"
    lst = str(suite_data / "ResNet20_FL.csv")
    check_refused(
        "sfi",
        "run",
        *images,
        "--faults",
        lst,
        "--numerics",
        "layer9.*=tf32",
        "--out",
        str(out),
        names=["--numerics", "layer9.*", "matches no convolution"],
        outputs=[out / "run.json"],
    )
    garbage = tmp_path / "map.toml"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    check_refused(
        "sfi",
        "run",
        *images,
        "--faults",
        lst,
        "--numerics",
        str(garbage),
        "--out",
        str(out),
        names=["--numerics", str(garbage)],
        outputs=[out / "run.json"],
    )


def test_sfi_resume_of_a_damaged_run_description(tmp_path, images, suite_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"fingerprint": {"model_ha')
    check_refused(
        "sfi",
        "run",
        *images,
        "--faults",
        str(suite_data / "ResNet20_FL.csv"),
        "--max-faults",
        "3",
        "--resume",
        "--out",
        str(out),
        names=["--resume", "run.json", "another --out"],
        outputs=[out / "run.json", out / "summary.json"],
    )


def test_sfi_compare_needs_published_outcomes(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text('Injection,Layer,TensorIndex,Bit\n0,conv1,"(3, 0, 2, 1)",15\n')
    check_refused("sfi", "compare", str(plain), str(plain), names=[str(plain), "no outcome columns"])


def test_zoo_import_refuses_code_and_weights_that_do_not_fit(tmp_path, suite_data):
    import torch

    code = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), code)  # a pickled module: loading it runs its class
    out = tmp_path / "ck"
    r = check_refused(
        "zoo",
        "import",
        str(code),
        "--arch",
        "resnet20",
        "--dataset",
        "cifar10",
        "--out",
        str(out),
        names=[str(code), "refused", "torch.nn.modules.linear.Linear"],
        outputs=[out / "config.json"],
    )
    assert "weights_only=False" not in r.result.stderr  # torch's advice to run the file's code is not repeated
    check_refused(
        "zoo",
        "import",
        str(suite_data / "ResNet20.th"),
        "--arch",
        "resnet32",
        "--dataset",
        "cifar10",
        "--out",
        str(out),
        names=["cifar10/resnet32", "60 missing: layer1.3.conv1.weight"],
        outputs=[out / "config.json", out / "model.pt"],
    )


def test_sfi_run_refuses_bits_outside_the_stored_format(tmp_path, foolbox_images):
    """A list written for float32 run on the int8 model: bit 20 of an 8-bit code is refused, by its row."""
    faults = tmp_path / "list.csv"
    faults.write_text(
        LIST_HEAD + '0,stem.conv,"(3, 0, 2, 1)",5,20,20,0,0\n1,stem.conv,"(3, 0, 2, 1)",20,20,20,0,0\n'
        '2,blocks.0.unit1.conv,"(1, 0, 0, 0)",30,20,20,0,0\n'
    )
    out = tmp_path / "out"
    check_refused(
        "sfi",
        "run",
        "--model",
        "smallnet",
        "--image-dir",
        str(foolbox_images),
        "--image-glob",
        "cifar10_*.png",
        "--images",
        "2",
        "--quantize",
        "int8",
        "--faults",
        str(faults),
        "--out",
        str(out),
        names=[str(faults), "line 3", "bit 20", "stored in int8 (bits 0..7)", "2 of 3 rows", "another format"],
        outputs=[out / "run.json", out / "outcomes.npy"],
    )


FACTORIES = '''
import torch
from torch import nn


class Spectral(nn.Module):
    """A layer whose operation (the FFT) the CPU does not compute in 16 bits."""

    def forward(self, x):
        return torch.fft.rfft2(x).abs()


class FFTNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.spec = Spectral()
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.spec(self.conv(x)).mean((2, 3)))


class CircularNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
'''


@pytest.mark.parametrize(
    "factory, option, names",
    [
        ("FFTNet", ["--dtype", "float16"], ["--dtype float16", "layer spec (Spectral)", "on cpu"]),
        ("CircularNet", ["--quantize", "int8"], ["--quantize int8", "layer conv", "padding_mode='circular'"]),
    ],
)
def test_sfi_run_refuses_a_format_a_layer_cannot_take(tmp_path, foolbox_images, factory, option, names):
    (tmp_path / "nets.py").write_text(FACTORIES)
    out = tmp_path / "out"
    check_refused(
        "sfi",
        "run",
        "--factory",
        f"{tmp_path / 'nets.py'}:{factory}",
        "--image-dir",
        str(foolbox_images),
        "--image-glob",
        "cifar10_*.png",
        "--images",
        "2",
        *option,
        "--method",
        "network",
        "--out",
        str(out),
        names=names,
        outputs=[out / "run.json"],
    )


@pytest.mark.parametrize(
    "action, extra",
    [
        ("plan", ["--method", "network"]),
        ("run", ["--method", "network", "--out", "OUT"]),
        ("run", ["--faults", "LIST", "--out", "OUT"]),  # no plan: t is computed from --confidence here
        ("run", ["--quantize", "int8", "--target", "scales", "--out", "OUT"]),  # its own sample
        ("validate", ["--out", "OUT"]),
    ],
)
@pytest.mark.parametrize("opt, value", [("--error", "nan"), ("--error", "-0.01"), ("--confidence", "inf"),
                                        ("--confidence", "1.5"), ("--confidence", "nan")])  # fmt: skip
def test_sfi_refuses_a_margin_or_confidence_out_of_range(tmp_path, action, extra, opt, value):
    """Checked before any model is loaded, by every action that sizes or scores a sample (in-process: cheap)."""
    from diehardlab.hardening.sfi.cli import main

    from diehardlab.errors import ConfigError

    lst = tmp_path / "list.csv"
    lst.write_text(LIST_HEAD + '0,conv1,"(3, 0, 2, 1)",15,10,10,0,0\n')
    out = tmp_path / "out"
    args = [str(out) if a == "OUT" else str(lst) if a == "LIST" else a for a in extra]
    with pytest.raises(ConfigError, match=f"^{opt}: .*got {value}"):
        main([action, "--model", "smallnet", *args, f"{opt}={value}"])
    assert not out.exists()


@pytest.mark.parametrize("opt", ["--batch-size", "--chunk", "--shards"])
def test_sfi_run_refuses_a_batch_or_chunk_below_one(tmp_path, foolbox_images, opt):
    """Checked in run_campaign, which 'sfi run' and 'sfi validate' share (0 was a traceback from range())."""
    from diehardlab.hardening.sfi.cli import main

    from diehardlab.errors import ConfigError

    out = tmp_path / "out"
    argv = ["run", "--model", "smallnet", "--image-dir", str(foolbox_images), "--image-glob", "cifar10_*.png"]
    argv += ["--images", "2", "--method", "network"]
    with pytest.raises(ConfigError, match=f"{opt} must be >= 1, got 0"):
        main([*argv, "--error", "0.2", opt, "0", "--out", str(out)])
    assert not (out / "run.json").exists()


@pytest.mark.parametrize(
    "opt, content, error, words",
    [
        ("--plan", b"\x89PNG\r\n\x1a\n\x00\xa3\xff", ConfigError, "not a plan written by 'diehard sfi plan'"),
        ("--plan", b'{"method": "network", "layers": 3}', ConfigError, "not a plan written by 'diehard sfi plan'"),
        ("--selection", b"\x89PNG\r\n\x1a\n\x00\xa3\xff", DataError, "not a ranking CSV of 'diehard select'"),
        ("--selection", b"image,rank\nimg0.png\n", DataError, "column rank"),  # a row shorter than the header
    ],
)
def test_sfi_run_refuses_a_garbage_plan_or_selection(tmp_path, foolbox_images, opt, content, error, words):
    """Binary garbage or a damaged file given as --plan or --selection: one line naming the option and file (both
    were a traceback: UnicodeDecodeError, AttributeError, TypeError)."""
    from diehardlab.hardening.sfi.cli import main

    bad = tmp_path / "bad.file"
    bad.write_bytes(content)
    out = tmp_path / "out"
    argv = ["run", "--model", "smallnet", "--image-dir", str(foolbox_images), "--image-glob", "cifar10_*.png"]
    argv += ["--images", "2", *(["--method", "network"] if opt == "--selection" else [])]
    with pytest.raises(error, match=f"^{opt}: {re.escape(str(bad))}.*{re.escape(words)}"):
        main([*argv, opt, str(bad), "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("opt", ["--map-out", "--json"])
def test_sfi_compare_checks_its_outputs_before_comparing(tmp_path, opt):
    """An output path it cannot write is refused first, naming the option (it was found after the comparison)."""
    from diehardlab.hardening.sfi.cli import main

    lst = tmp_path / "list.csv"
    lst.write_text(LIST_HEAD + '0,conv1,"(3, 0, 2, 1)",15,10,10,0,0\n')
    with pytest.raises(ConfigError, match=f"^{opt} {re.escape(str(lst))}/x: cannot write"):
        main(["compare", str(lst), str(lst), opt, str(lst / "x")])


def test_an_image_dir_that_is_not_a_folder_is_named(tmp_path):
    from diehardlab.hardening.sfi.sources import image_dir_images

    from diehardlab.errors import DataError

    with pytest.raises(DataError, match=r"--image-dir .*nowhere: no such folder"):
        image_dir_images(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"--image-dir .*file.png: is not a folder"):
        image_dir_images(tmp_path / "file.png")
