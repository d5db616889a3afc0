"""Bad input for ``diehard sfi`` and ``diehard zoo``: one clear line, non-zero exit, no traceback, no run left."""

from __future__ import annotations

import pytest

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
