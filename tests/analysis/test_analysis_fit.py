"""diehard fit on synthetic campaigns with known answers, and on the real ChipIR + Darknet samples."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pandas as pd
import pytest
from diehardlab.analysis.fit import fit, write_result
from scipy.stats import chi2

from diehardlab.errors import ConfigError
from tests.analysis.conftest import T0, campaign_file, chipir_2016, chipir_rows, write
from tests.analysis.logs import dut_log

DARKNET = "2016_11_24_01_26_02_cudaDarknet_carol-k402.log"


def row(df: pd.DataFrame, cls: str, group: str | None = None) -> pd.Series:
    sub = df[df["error_class"] == cls]
    if group is not None:
        sub = sub[sub["group"] == group]
    assert len(sub) == 1, sub
    return sub.iloc[0]


@pytest.fixture
def campaign(tmp_path):
    """A flux log from 10:00 to 11:00 UTC at 10 counts/s, beam off 10:20-10:25; four runs."""
    write(tmp_path / "flux.txt", chipir_rows(3600, 10.0, off=(1200, 1500)))
    logs = tmp_path / "logs"
    # run A: 100 s from 10:01, 2 SDC (1 critical), clean end
    dut_log(logs, T0 + timedelta(minutes=1), sdc_at={10: True, 50: False})
    # run B: 10:19:00, 200 s of kernel time, half under the beam-off; crashed: server copy + DUT copy
    b_start = T0 + timedelta(minutes=19)
    due = ("#SERVER_DUE:soft APP reboot", b_start + timedelta(seconds=240))
    dut_log(logs / "server", b_start, iters=200, server=due, due_cause="app-crash", end="none")
    dut_log(logs / "local", b_start, iters=200, end="none")
    # run C: another benchmark, zero events
    dut_log(logs, T0 + timedelta(minutes=30), bench="cudaGEMM", iters=300)
    # run D: after the flux log ends: excluded, visibly
    dut_log(logs, T0 + timedelta(minutes=70), iters=10, sdc_at={3: True})
    return campaign_file(tmp_path, factor=2.0e5, att=0.5), logs, tmp_path / "flux.txt"


def test_fit_known_answers(campaign):
    cfile, logs, flux = campaign
    res = fit(cfile, [logs], [flux])
    runs = res.runs.set_index("start_utc")
    assert len(res.runs) == 4  # the two copies of run B are one run
    a = res.runs[res.runs["benchmark"].eq("cudaDarknet") & res.runs["sdc"].eq(2)].iloc[0]
    assert a["fluence_n_cm2"] == pytest.approx(100 * 10 * 2.0e5 * 0.5)
    assert a["beam_off_s"] == 0 and a["end_source"].startswith("start + kernel")
    b = res.runs[res.runs["due"].eq(1)].iloc[0]
    assert (b["due_class"], b["due_cause"], b["copies"]) == ("crash", "app-crash", 2)
    assert b["end_source"] == "#SERVER_END time" and b["wall_s"] == 240
    assert b["beam_off_s"] == pytest.approx(240 - 60) and b["beam_on_s"] == pytest.approx(60)
    assert b["fluence_n_cm2"] == pytest.approx(60 * 10 * 2.0e5 * 0.5)
    d = res.runs[res.runs["excluded"]].iloc[0]
    assert "no flux log covers" in d["exclude_reason"]
    assert any("EXCLUDED" in n for n in res.notes)
    assert runs.index.is_unique

    g = res.groups
    darknet = "dut1/cudaDarknet/OFF"
    sdc = row(g, "sdc", darknet)
    fluence = (100 + 60) * 10 * 2.0e5 * 0.5
    assert sdc["events"] == 2 and sdc["fluence_n_cm2"] == pytest.approx(fluence)
    assert sdc["sigma_cm2"] == pytest.approx(2 / fluence)
    assert sdc["sigma_lo_cm2"] == pytest.approx(chi2.ppf(0.025, 4) / 2 / fluence)
    assert sdc["sigma_hi_cm2"] == pytest.approx(chi2.ppf(0.975, 6) / 2 / fluence)
    assert sdc["fit"] == pytest.approx(2 / fluence * 13 * 1e9)
    assert (row(g, "sdc_critical", darknet)["events"], row(g, "sdc_tolerable", darknet)["events"]) == (1, 1)
    assert row(g, "due_crash", darknet)["events"] == 1
    # zero events: kept, with its upper limit
    gemm = row(g, "sdc", "dut1/cudaGEMM/OFF")
    assert gemm["events"] == 0 and gemm["sigma_lo_cm2"] == 0
    assert gemm["sigma_hi_cm2"] == pytest.approx(3.6889 / gemm["fluence_n_cm2"], rel=1e-4)
    # no SDC at all: zero critical SDC is known for any benchmark, so the split rows are there too
    assert row(g, "sdc_critical", "dut1/cudaGEMM/OFF")["events"] == 0
    assert set(g["ci_method"]) == {"garwood two-sided 0.95"} and set(g["fluence_method"]) == {"integrated"}
    # normalised to the lowest non-zero rate: darknet is its own reference for sdc
    assert row(g, "sdc", darknet)["norm"] == 1.0
    assert not res.simulated


def test_fit_options_and_outputs(campaign, tmp_path):
    cfile, logs, flux = campaign
    res = fit(cfile, [logs], [flux], one_sided=True, confidence=0.9, legacy=True, fluence="mean-flux-x-acc-time",
              reference_group="board=dut1,benchmark=cudaGEMM")  # fmt: skip
    sdc = row(res.groups, "sdc", "dut1/cudaDarknet/OFF")
    assert sdc["ci_method"] == "garwood one-sided upper 0.9" and sdc["sigma_lo_cm2"] == 0
    assert sdc["fluence_method"] == "mean-flux-x-acc-time"
    # mean flux over run B's 240 s window (60 s of beam) x its 200 s of kernel time
    b = res.runs[res.runs["due"].eq(1)].iloc[0]
    assert b["fluence_n_cm2"] == pytest.approx(60 * 10 * 2.0e5 * 0.5 / 240 * 200)
    # the ipdps2021 convention: 1.96 x value / sqrt(N) for every N, 2 included
    assert sdc["sigma_legacy_err_cm2"] == pytest.approx(1.96 * sdc["sigma_cm2"] / math.sqrt(2))
    # reference with zero events: ratios against it are infinite, the interval's lower bound is finite
    assert row(res.groups, "sdc", "dut1/cudaDarknet/OFF")["norm_reference"] == "dut1/cudaGEMM/OFF"
    written = write_result(res, tmp_path / "out")
    names = {p.name for p in written}
    assert {"fit.csv", "runs.csv", "events.csv", "meta.json"} <= names
    df = pd.read_csv(tmp_path / "out" / "fit.csv")
    for col in ("fluence_n_cm2", "sigma_cm2", "sigma_lo_cm2", "sigma_hi_cm2", "fit", "fit_lo", "fit_hi", "events",
                "error_class", "board", "benchmark", "ecc", "ci_method", "fluence_method"):  # fmt: skip
        assert col in df.columns
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["fluence_method"] == "mean-flux-x-acc-time" and meta["versions"]["diehardlab"]


def test_simulated_campaign_truth_comparison(tmp_path):
    """A simulator-style run: <log>.chipir.txt and <log>.truth.json beside the log."""
    logs = tmp_path / "logs"
    log = dut_log(logs, T0 + timedelta(minutes=1), iters=1000, sdc_at={i: i % 2 == 0 for i in range(0, 1000, 50)})
    write(log.with_name(log.name + ".chipir.txt"), chipir_rows(3600, 10.0))
    fluence = 1000 * 10 * 1.0e5
    truth = {"simulated": True, "log_file": log.name, "spec": {}, "flux_n_cm2_s": 1e6, "seed": 1,
             "true_sigma_cm2": {"sdc": 20 / fluence, "due": 1e-12, "crash": 5e-13, "hang": 5e-13, "nan": 0.0},
             "beam_on_kernel_time_s": 1000.0,
             "events": [{"kind": "corrupt", "observed": "sdc"}] * 20 + [{"kind": "crash", "observed": "due"}],
             }  # fmt: skip
    log.with_name(log.name + ".truth.json").write_text(json.dumps(truth))
    (logs / "board1.console.log").write_text("U-Boot 2016.01\nStarting kernel ...\n")
    cfile = campaign_file(tmp_path, kind="simulated", factor=1.0e5)
    res = fit(cfile, [logs])
    assert any("board1.console.log: console capture of 'board1', which is no DUT" in n for n in res.notes)
    truth["flux_factor"] = 5.0e5
    log.with_name(log.name + ".truth.json").write_text(json.dumps(truth))
    assert any("WARNING" in n and "set flux_factor = 500000" in n for n in fit(cfile, [logs]).notes)
    truth["flux_factor"] = 1.0e5
    log.with_name(log.name + ".truth.json").write_text(json.dumps(truth))
    assert res.simulated and "SIMULATED" in res.meta["simulated_note"]
    t = res.truth.set_index("error_class")
    assert t.loc["sdc", "true_sigma_cm2"] == pytest.approx(20 / fluence)
    assert t.loc["sdc", "contains_true"] and t.loc["sdc", "events"] == 20 == t.loc["sdc", "truth_events"]
    assert t.loc["due_crash", "truth_events"] == 1 and t.loc["due_hang", "truth_events"] == 0
    assert t.loc["due", "true_sigma_cm2"] == pytest.approx(1e-12)
    out = write_result(res, tmp_path / "out")
    assert (tmp_path / "out" / "truth.csv") in out
    assert pd.read_csv(tmp_path / "out" / "fit.csv")["simulated_beam"].all()


@pytest.mark.parametrize("iso", [False, True])
def test_server_copy_with_iso_prefix(tmp_path, iso):
    logs = tmp_path / "logs"
    start = T0 + timedelta(minutes=5)
    dut_log(logs, start, iters=50, server=("#SERVER_END", start + timedelta(seconds=80)), iso=iso)
    write(tmp_path / "flux.txt", chipir_rows(3600, 10.0))
    res = fit(campaign_file(tmp_path), [logs], [tmp_path / "flux.txt"])
    r = res.runs.iloc[0]
    assert r["due"] == 0 and r["wall_s"] == 80 and r["fluence_n_cm2"] == pytest.approx(80 * 10 * 1e5)


def test_real_chipir_and_darknet_brazil_clock(tmp_path, beam_logs, facility_logs):
    """The Darknet run of 24 Nov 2016 with its DUT clock on Brazil summer time (UTC-2): the beam was on.

    By hand from countlog-2016-11-24.txt: the run's window is 03:26:02.000 .. 03:27:21.492 UTC (start +
    79.492019 s of kernel time). Fission counter rows around it:
      03:25:59.475 1736845   03:26:02.478 1736875   ...   03:27:20.542 1737656   03:27:23.543 1737686
    Counts = 30 x 0.478/3.003 + (1737656 - 1736875) + 30 x 0.950019/3.001; no stall: beam-off 0 s."""
    c = chipir_2016(tmp_path, "America/Sao_Paulo")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / DARKNET).write_bytes((beam_logs / DARKNET).read_bytes())
    res = fit(c, [logs], [facility_logs / "countlog-2016-11-24.txt"])
    r = res.runs.iloc[0]
    assert r["start_utc"] == "2016-11-24T03:26:02+00:00"
    counts = 30 * 0.478 / 3.003 + (1737656 - 1736875) + 30 * 0.950019 / 3.001
    assert r["fluence_n_cm2"] == pytest.approx(counts * 5.0e5, rel=1e-6)
    assert math.isfinite(r["fluence_n_cm2"]) and r["beam_off_s"] == 0.0
    assert (r["sdc"], r["aborted"], r["due"]) == (2, "amount of errors equals of the last iteration", 0)
    sdc = row(res.groups, "sdc")
    assert sdc["sigma_cm2"] == pytest.approx(2 / (counts * 5.0e5), rel=1e-6)


def test_real_chipir_and_darknet_london_clock(tmp_path, beam_logs, facility_logs):
    """The same run read on UK time: 01:26:02 .. 01:27:21.492 UTC lies inside the stall of the fission
    counter (1671178 from 01:25:54.460 to 01:27:27.532), so all 79.492 s are beam-off, the fluence is 0 and
    the analysis warns that 2 SDC without fluence point to a wrong clock zone."""
    c = chipir_2016(tmp_path, "Europe/London")
    res = fit(c, [beam_logs / DARKNET], [facility_logs / "countlog-2016-11-24.txt"])
    r = res.runs.iloc[0]
    assert r["fluence_n_cm2"] == 0.0 and r["beam_off_s"] == pytest.approx(79.492019, abs=1e-4)
    assert any("zero fluence" in n and "time zone" in n for n in res.notes)
    assert math.isinf(row(res.groups, "sdc")["sigma_hi_cm2"])


def test_unknown_host_is_excluded_visibly(tmp_path, beam_logs, facility_logs):
    c = chipir_2016(tmp_path, "UTC")
    res = fit(c, [beam_logs], [facility_logs / "countlog-2016-11-24.txt"])
    ex = res.runs[res.runs["excluded"]]
    assert len(ex) == 8 and len(res.runs) == 9
    assert all(("clock zone is unknown" in s) or ("no flux log" in s) for s in ex["exclude_reason"])
    # with a default zone for unlisted hosts, runs outside the flux log are excluded for that reason
    res = fit(c, [beam_logs], [facility_logs / "countlog-2016-11-24.txt"], dut_timezone="UTC")
    assert res.runs["exclude_reason"].str.contains("no flux log covers").sum() == 8


def test_wall_end_from_file_time_only_when_asked(tmp_path):
    """A fresh DUT log without a wall-clock end (20 s of kernel time in 100 s of wall time): by default it ends at
    start + kernel time, whatever the file's time; with wall_end="mtime" its modification time ends the run when
    plausible, and an implausible time (a copy made later) is not used."""
    import os
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)
    start = now - timedelta(seconds=100)
    log = dut_log(tmp_path / "logs", start, iters=20)
    os.utime(log, (now.replace(tzinfo=timezone.utc).timestamp(),) * 2)
    write(tmp_path / "flux.txt", chipir_rows(400, 10.0, start=start - timedelta(seconds=200)))
    cfile = campaign_file(tmp_path)
    r = fit(cfile, [tmp_path / "logs"], [tmp_path / "flux.txt"]).runs.iloc[0]
    assert r["end_source"].startswith("start + kernel") and r["wall_s"] == pytest.approx(20)
    assert r["fluence_window"] == "start + kernel time"
    res = fit(cfile, [tmp_path / "logs"], [tmp_path / "flux.txt"], wall_end="mtime")
    r = res.runs.iloc[0]
    assert r["end_source"] == "file modification time" and r["wall_s"] == pytest.approx(100)
    assert r["fluence_n_cm2"] == pytest.approx(100 * 10 * 1e5) and r["fluence_window"] == "file time"
    assert any("--wall-end mtime" in n for n in res.notes) and res.meta["wall_end"] == "mtime"
    r = fit(cfile, [tmp_path / "logs"], [tmp_path / "flux.txt"], fluence="mean-flux-x-acc-time",
            wall_end="mtime").runs.iloc[0]  # fmt: skip
    assert r["fluence_n_cm2"] == pytest.approx(20 * 10 * 1e5)
    os.utime(log, (now.replace(tzinfo=timezone.utc).timestamp() + 86400 * 30,) * 2)  # copied a month later
    r = fit(cfile, [tmp_path / "logs"], [tmp_path / "flux.txt"], wall_end="mtime").runs.iloc[0]
    assert r["end_source"].startswith("start + kernel")


def test_due_run_ends_at_its_last_dut_line(tmp_path):
    """A server copy with receive-time prefixes: the crashed run stops at its last DUT line, not when the
    server noticed it 30 s later (the flux log may end with the run, as the beam simulator's does)."""
    logs = tmp_path / "logs"
    start = T0 + timedelta(minutes=5)
    due = ("#SERVER_DUE:soft APP reboot", start + timedelta(seconds=3600))
    log = dut_log(logs, start, iters=50, server=due, due_cause="app-hang", end="none", iso=True)
    write(tmp_path / "flux.txt", chipir_rows(3600, 10.0))
    res = fit(campaign_file(tmp_path), [logs], [tmp_path / "flux.txt"])
    r = res.runs.iloc[0]
    lines = log.read_text().splitlines()
    last_dut = next(i for i, ln in enumerate(lines) if "DUE cause" in ln) - 1  # the line before the server's
    assert (r["due_class"], r["end_source"]) == ("hang", "last DUT line before the DUE")
    assert r["wall_s"] == pytest.approx(last_dut, abs=0.01)  # dut_log stamps line k at start + k s
    assert not r["excluded"]


def test_lansce_distance_and_dated_factors(tmp_path):
    """LANSCE: inverse-square attenuation from the 20 m reference and a factor that changes on a date (facility
    clock America/Denver, UTC-7 in March); the DUT clock is UTC."""
    rows = [f"{(T0 + timedelta(hours=-7, seconds=s)):%Y-%m-%d %H:%M:%S},000 {1000 + 4 * s}" for s in range(0, 3601, 2)]
    write(tmp_path / "lansce.txt", rows)
    (tmp_path / "c.toml").write_text(
        '[campaign]\nname = "l"\n[facility]\nkind = "lansce"\ntimezone = "America/Denver"\nflux_logs = ["lansce.txt"]\n'
        "flux_factors = [{since = 2026-03-01T00:00:00, value = 10.0}, {since = 2026-03-01T03:30:00, value = 30.0}]\n"
        '[[dut]]\nname = "dut1"\ntransport = "local"\ndistance_m = 5.0\n[[dut.benchmark]]\nname = "cudaDarknet"\n'
        'argv = ["x"]\n'
    )
    dut_log(tmp_path / "logs", T0 + timedelta(minutes=20), iters=1200)  # 10:20..10:40 UTC = 03:20..03:40 Denver
    r = fit(tmp_path / "c.toml", [tmp_path / "logs"]).runs.iloc[0]
    att = 20**2 / 25**2
    assert r["fluence_n_cm2"] == pytest.approx((600 * 4 * 10.0 + 600 * 4 * 30.0) * att)


def test_simulated_campaign_without_facility_table(tmp_path):
    """The demo's campaign file has no [facility]: the truth files give the simulator's flux factor, and the
    fluence defaults to the simulator's own definition unless the user chose one."""
    logs = tmp_path / "logs"
    log = dut_log(logs, T0 + timedelta(minutes=1), iters=100, sdc_at={5: True})
    write(log.with_name(log.name + ".chipir.txt"), chipir_rows(3600, 10.0))
    truth = {"simulated": True, "log_file": log.name, "flux_factor": 3.0e5, "true_sigma_cm2": {"sdc": 1e-9},
             "events": [{"kind": "corrupt", "observed": "sdc"}]}  # fmt: skip
    log.with_name(log.name + ".truth.json").write_text(json.dumps(truth))
    text = campaign_file(tmp_path).read_text()
    cfile = tmp_path / "nofac.toml"
    cfile.write_text(text[: text.index("[facility]")] + text[text.index("[analysis]") :])
    res = fit(cfile, [logs])
    assert res.simulated and res.meta["facility"] == "simulated"
    assert res.options.fluence == "mean-flux-x-acc-time"
    assert res.runs.iloc[0]["fluence_n_cm2"] == pytest.approx(100 * 10 * 3.0e5)
    assert any("flux_factor 300000 from the truth files" in n for n in res.notes)
    assert fit(cfile, [logs], fluence="integrated").options.fluence == "integrated"
    log.with_name(log.name + ".truth.json").unlink()
    with pytest.raises(ConfigError, match=r"no \[facility\] table"):
        fit(cfile, [logs])


def test_run_before_the_first_dated_factor_is_excluded(tmp_path):
    """Issue 18: with dated flux_factors only, a run before the first date got a NaN fluence that pandas skipped in
    the group's sum while its events stayed: the cross section doubled, silently. It is excluded, with the reason,
    and no NaN or infinite number reaches the table without a note saying why."""
    rows = [f"{(T0 + timedelta(seconds=s)):%Y-%m-%d %H:%M:%S},000 {1000 + 4 * s}" for s in range(0, 3601, 2)]
    write(tmp_path / "lansce.txt", rows)
    (tmp_path / "c.toml").write_text(
        '[campaign]\nname = "l"\n[facility]\nkind = "lansce"\nflux_logs = ["lansce.txt"]\n'
        "flux_factors = [{since = 2026-03-01T10:30:00, value = 10.0}]\n"
        '[[dut]]\nname = "dut1"\ntransport = "local"\n[[dut.benchmark]]\nname = "cudaDarknet"\nargv = ["x"]\n'
    )
    dut_log(tmp_path / "logs", T0 + timedelta(minutes=10), iters=600, sdc_at={5: True, 9: True})  # before 10:30
    dut_log(tmp_path / "logs", T0 + timedelta(minutes=40), iters=600, sdc_at={5: True, 9: True})
    res = fit(tmp_path / "c.toml", [tmp_path / "logs"])
    early = res.runs.sort_values("start_utc").iloc[0]
    assert early["excluded"] and "before the first [facility] flux_factors date" in early["exclude_reason"]
    sdc = row(res.groups, "sdc")
    assert sdc["events"] == 2 and sdc["fluence_n_cm2"] == pytest.approx(600 * 4 * 10.0)
    cols = ["events", "fluence_n_cm2", "sigma_cm2", "sigma_lo_cm2", "sigma_hi_cm2", "fit", "fit_lo", "fit_hi", "norm",
            "norm_lo", "norm_hi"]  # fmt: skip
    bad = ~res.groups[cols].astype(float).apply(lambda c: c.map(math.isfinite)).all(axis=1)
    assert bad.any() and (res.groups.loc[bad, "note"].str.len() > 0).all()
    assert not res.runs.loc[~res.runs["excluded"], "fluence_n_cm2"].isna().any()


def test_fit_replaces_an_earlier_fit_as_a_set(tmp_path, campaign):
    """Issue 18: a real fit into a folder that held a simulated fit kept its truth.csv, and the report then showed
    a 'truth comparison' for a real campaign. The outputs replace the folder's as a set; a folder holding other
    files is refused and left as it was."""
    from diehardlab.analysis.report import build_report

    logs = tmp_path / "sim"
    log = dut_log(logs, T0 + timedelta(minutes=1), iters=100, sdc_at={5: True})
    write(log.with_name(log.name + ".chipir.txt"), chipir_rows(3600, 10.0))
    truth = {"simulated": True, "log_file": log.name, "flux_factor": 1.0e5, "true_sigma_cm2": {"sdc": 1e-9}}
    log.with_name(log.name + ".truth.json").write_text(json.dumps(truth))
    out = tmp_path / "fit-results"
    (tmp_path / "simc").mkdir()
    write_result(fit(campaign_file(tmp_path / "simc", kind="simulated"), [logs]), out)
    assert (out / "truth.csv").is_file()
    cfile, real_logs, flux = campaign
    written = write_result(fit(cfile, [real_logs], [flux]), out)
    assert not (out / "truth.csv").exists() and {p.name for p in out.iterdir()} == {p.name for p in written}
    assert json.loads((out / "meta.json").read_text())["simulated"] is False
    assert "Truth comparison" not in build_report(tmp_path / "r.md", fit=out).read_text()
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match=r"holds files that are not outputs of diehard fit \(notes\.txt\)"):
        write_result(fit(cfile, [real_logs], [flux]), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
