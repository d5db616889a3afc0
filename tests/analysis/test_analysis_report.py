"""diehard report: HTML with embedded figures and Markdown, from fit, pvf, evaluate JSON and truth files."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
from diehardlab.analysis.fit import fit, write_result
from diehardlab.analysis.nvbitfi import pvf, write_pvf
from diehardlab.analysis.report import build_report

from diehardlab.errors import DataError
from tests.analysis.conftest import T0, campaign_file, chipir_rows, write
from tests.analysis.logs import dut_log
from tests.analysis.test_analysis_nvbitfi import make_campaign
from tests.conftest import run_diehard

EVAL = {"clean_accuracy": 0.97, "faulty_accuracy_mean": 0.81, "regret_mean": 0.16, "regret_std": 0.03,
        "critical_rate": 0.12, "tolerable_rate": 0.30, "config": {"dataset": "digits", "model": {"arch": "smallnet",
        "activation": "relu6", "order": "bn-act"}}}  # fmt: skip


@pytest.fixture
def simulated(tmp_path):
    logs = tmp_path / "logs"
    for k, bench in enumerate(("cudaDarknet", "cudaGEMM")):
        log = dut_log(logs, T0 + timedelta(minutes=1 + 20 * k), bench=bench, iters=600,
                      sdc_at={i: i % 3 == 0 for i in range(0, 600, 40 * (k + 1))})  # fmt: skip
        write(log.with_name(log.name + ".chipir.txt"), chipir_rows(3600, 10.0))
        truth = {"simulated": True, "log_file": log.name, "flux_n_cm2_s": 1e6, "seed": 3, "spec": {},
                 "true_sigma_cm2": {"sdc": 15 / (k + 1) / 6e8, "due": 0.0, "crash": 0.0, "hang": 0.0, "nan": 0.0},
                 "beam_on_kernel_time_s": 600.0, "events": []}  # fmt: skip
        log.with_name(log.name + ".truth.json").write_text(json.dumps(truth))
    return fit(campaign_file(tmp_path, kind="simulated"), [logs])


def test_html_report_is_self_contained(tmp_path, simulated):
    root, dut = make_campaign(tmp_path / "fi")
    evals = []
    for i, act in enumerate(("relu", "relu6")):
        p = tmp_path / f"eval{i}.json"
        p.write_text(json.dumps(EVAL | {"regret_mean": 0.1 + i, "config": EVAL["config"] | {"name": act}}))
        evals.append(p)
    out = build_report(tmp_path / "r" / "report.html", fit=simulated, pvf=pvf(root, dut), evaluate=evals)
    text = out.read_text()
    assert "SIMULATED BEAM" in text and "Truth comparison" in text
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(imgs) == 5  # FIT, normalised, cumulative events, PVF, regret: all embedded
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert 'src="http' not in text and "<link" not in text
    for heading in ("Cross sections and FIT", "Normalised cross sections", "NVBitFI", "regret", "Runs"):
        assert heading in text
    assert "relu6" in text and "sdc_critical" in text and "garwood two-sided 0.95" in text


def test_markdown_report_from_written_folders(tmp_path, simulated):
    write_result(simulated, tmp_path / "fit")
    root, _ = make_campaign(tmp_path / "fi")
    write_pvf(pvf(root), tmp_path / "pvf")
    out = build_report(tmp_path / "report.md", fit=tmp_path / "fit", pvf=tmp_path / "pvf", evaluate=[EVAL])
    text = out.read_text()
    assert text.startswith("# diehardlab report: t")
    assert "| group | error_class | events |" in text and "SIMULATED BEAM" in text
    figs = re.findall(r"!\[[^\]]*\]\((report_files/figure\d+\.png)\)", text)
    assert figs and all((tmp_path / f).is_file() for f in figs)
    assert "True" in text.split("Truth comparison")[1]  # the intervals contain the truths here


def test_report_command_without_torch(tmp_path, simulated):
    write_result(simulated, tmp_path / "fit")
    truth_dir = tmp_path / "logs"
    evals = []
    for name in ("relu6-model", "diehardnet-model"):
        evals += ["--evaluate", str(tmp_path / f"{name}.json")]
        (tmp_path / f"{name}.json").write_text(json.dumps(EVAL | {"config": {"name": name}}))
    r = run_diehard("report", "--fit", str(tmp_path / "fit"), "--truth", str(truth_dir), *evals, "--out",
                    str(tmp_path / "rep.html"), block=("torch",))  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "rep.html").read_text()
    assert "SIMULATED BEAM" in text and "relu6-model" in text and "diehardnet-model" in text


def test_evaluate_labels_from_the_evaluate_json_layout():
    from diehardlab.analysis.report import load_evaluate

    base = {k: v for k, v in EVAL.items() if k != "config"}
    ev = load_evaluate([
        base | {"configuration": {"checkpoint": "out/checkpoints/digits_relu6", "model_name": None}},
        base | {"configuration": {"checkpoint": "x", "model_name": "digits_diehardnet"}},
        base | {"label": "mine"},
    ])  # fmt: skip
    assert list(ev["label"]) == ["digits_relu6", "digits_diehardnet", "mine"]


def test_report_bad_inputs(tmp_path):
    with pytest.raises(DataError, match=r"no fit\.csv"):
        build_report(tmp_path / "x.html", fit=tmp_path)
    with pytest.raises(DataError, match="lacks"):
        build_report(tmp_path / "x.html", evaluate=[{"clean_accuracy": 1.0}])
    with pytest.raises(DataError, match=r"\.html or \.md"):
        build_report(tmp_path / "x.pdf", evaluate=[EVAL])


def test_report_when_every_run_is_excluded(tmp_path, beam_logs, facility_logs):
    from tests.conftest import ROOT

    hog = beam_logs / "2016_12_13_06_24_22_cudaHOG_carol-k402.log"
    res = fit(ROOT / "setups" / "analysis" / "chipir-2016-11.toml", [hog], [facility_logs / "countlog-2016-11-24.txt"])
    assert res.groups.empty and res.runs["excluded"].all()
    write_result(res, tmp_path / "fit")
    text = build_report(tmp_path / "r.html", fit=tmp_path / "fit").read_text()
    assert "1 runs, 1 excluded" in text and "no flux log covers" in text
