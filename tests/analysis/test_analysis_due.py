"""What the DieHardNet paper reports beyond cross sections: DUE root causes and recovery levels, the Fig. 7
normalisation with the ratio's interval, natural-exposure time and the published legacy bars."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from diehardlab.analysis import intervals
from diehardlab.analysis.due import classify_text
from diehardlab.analysis.fit import fit

from diehardlab.formats import grammar as g
from tests.analysis.conftest import T0, chipir_rows, write
from tests.analysis.logs import dut_log

HOG = "2016_12_13_06_24_22_cudaHOG_carol-k402.log"
TWO_BOARDS = """
[campaign]
name = "fig7"
[server]
journal = "journal.jsonl"
[facility]
kind = "chipir"
flux_factor = 1.0e5
[[dut]]
name = "dut1"
transport = "local"
[[dut.benchmark]]
name = "DieHardNet"
argv = ["x"]
model = "diehardnet"
[[dut.benchmark]]
name = "Baseline"
argv = ["x"]
model = "baseline"
[[dut]]
name = "dut2"
transport = "local"
[[dut.benchmark]]
name = "Baseline"
argv = ["x"]
model = "baseline"
"""


def iso(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_cuda_failure_text_of_a_real_log_is_a_due(tmp_path, beam_logs):
    """The real HOG log ends with '#ERR ... unspecified launch failure' and then #END: the benchmark could not go
    on, a DUE (before: counted as a clean run), with its root cause from the log text."""
    from tests.conftest import ROOT

    res = fit(ROOT / "setups" / "analysis" / "chipir-2016-11.toml", [beam_logs / HOG], [])
    r = res.runs.iloc[0]
    assert (r["due"], r["due_class"], r["due_cause"]) == (1, "crash", "log text")
    assert r["due_root_cause"] == "cuda-launch-failure" and "unspecified launch failure" in r["due_detail"]
    assert r["due_cause_source"] == f"log {HOG}" and r["due_recovery"] == "unknown"


def test_root_causes_and_recovery_levels_per_group(tmp_path):
    """Three DUEs on one board: an uncorrectable ECC error in the console capture (the kernel's Xid 48) that the
    journal shows escalating from an app restart to an OS reboot; a silent hang power-cycled (server copy only);
    a kernel panic on the console of a run whose DUT log just stops, followed by a boot banner."""
    logs = tmp_path / "logs"
    write(tmp_path / "flux.txt", chipir_rows(3600, 10.0))
    (tmp_path / "c.toml").write_text(TWO_BOARDS)
    a = T0 + timedelta(minutes=1)
    dut_log(logs, a, host="dut1", bench="DieHardNet", iters=100, end="none",
            server=(g.SERVER_DUE_APP, a + timedelta(seconds=130)), due_cause="app-crash", iso=True)  # fmt: skip
    b = T0 + timedelta(minutes=10)
    dut_log(logs, b, host="dut1", bench="DieHardNet", iters=100, end="none",
            server=(g.SERVER_DUE_POWER, b + timedelta(seconds=140)), due_cause="app-hang", iso=True)  # fmt: skip
    c = T0 + timedelta(minutes=20)
    dut_log(logs / "dut-own", c, host="dut1", bench="DieHardNet", iters=100, end="none")
    # the console capture as 'diehard serve' writes it: a UTC stamp per line
    con = [
        (a + timedelta(seconds=99), "[ 812.114] NVRM: Xid (PCI:0000:01:00): 48, pid=4242, An uncorrectable double bit "
         "error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0."),
        (a + timedelta(seconds=160), "[    0.000000] Linux version 4.9.253-tegra (buildbrain@mobile-u64-5494)"),
        (c + timedelta(seconds=101), "[ 2218.001] Kernel panic - not syncing: Fatal exception in interrupt"),
        (c + timedelta(seconds=200), "[    0.000000] Booting Linux on physical CPU 0x0"),
    ]  # fmt: skip
    (logs / "console").mkdir()
    (logs / "console" / "dut1.console.log").write_text(
        "".join(f"{t:%Y-%m-%d %H:%M:%S}.000 {text}\n" for t, text in con)
    )
    journal = [
        {"time": iso(a + timedelta(seconds=120)), "event": "crash-detected", "dut": "dut1", "cause": "app-crash"},
        {"time": iso(a + timedelta(seconds=121)), "event": "app-restart", "dut": "dut1", "cause": "app-crash"},
        {"time": iso(a + timedelta(seconds=150)), "event": "os-reboot", "dut": "dut1", "cause": "os-hang"},
        {"time": iso(a + timedelta(seconds=200)), "event": "benchmark-start", "dut": "dut1"},
    ]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in journal) + '{"time": "2026-03')
    res = fit(tmp_path / "c.toml", [logs], [tmp_path / "flux.txt"])
    runs = res.runs.sort_values("start_utc").reset_index(drop=True)
    assert list(runs["due"]) == [1, 1, 1]
    assert list(runs["due_root_cause"]) == ["gpu-ecc-uncorrectable", "hang-no-output", "kernel-panic"]
    assert "Xid 48" in runs.loc[0, "due_detail"] and runs.loc[0, "due_cause_source"] == "console dut1.console.log"
    assert list(runs["due_recovery"]) == ["os-reboot", "power-cycle", "os-reboot"]
    assert list(runs["due_recovery_source"]) == ["journal", "server copy", "console dut1.console.log (boot banner)"]
    grp = res.groups[res.groups["group"] == "dut1/DieHardNet/OFF"].set_index("error_class")
    fluence = grp.loc["due", "fluence_n_cm2"]
    # the two server copies end at their last DUT line (4 s after the kernel time), the DUT-only log at start + kernel
    assert grp.loc["due", "events"] == 3 and fluence == pytest.approx((104 + 104 + 100) * 10 * 1e5)
    classes = [("due_cause_gpu-ecc-uncorrectable", 1), ("due_cause_kernel-panic", 1), ("due_cause_hang-no-output", 1),
               ("due_recovery_os-reboot", 2), ("due_recovery_power-cycle", 1)]  # fmt: skip
    for cls, n in classes:
        assert grp.loc[cls, "events"] == n
        lo, hi = intervals.garwood(n)
        assert grp.loc[cls, "fit"] == pytest.approx(n / fluence * 13e9)
        assert (grp.loc[cls, "sigma_lo_cm2"], grp.loc[cls, "sigma_hi_cm2"]) == pytest.approx(
            (lo / fluence, hi / fluence)
        )


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        ("#ERR CUDA error at conv.cu:88 code=700(cudaErrorIllegalAddress) an illegal memory access was encountered",
         "cuda-illegal-address"),
        ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "gpu-ecc-uncorrectable"),
        ("NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.", "gpu-xid"),
        ("watchdog: BUG: soft lockup - CPU#2 stuck for 22s! [darknet:1234]", "kernel-lockup"),
        ("#ERR p: [882, 116]; X r: 10.11, e: 10.22", None),
    ],
)  # fmt: skip
def test_text_classification(line, cause):
    hit = classify_text([line])
    assert (hit[0] if hit else None) == cause
    if cause == "gpu-xid":
        assert hit[1].startswith("Xid 79")


def test_fig7_natural_exposure_and_legacy_bars(tmp_path):
    """Per board, every group's tolerable SDC, critical SDC and DUE rates over that board's DieHardNet critical-SDC
    rate, with the exact ratio interval; a board without a DieHardNet group is said, not normalised."""
    logs = tmp_path / "logs"
    write(tmp_path / "flux.txt", chipir_rows(3600, 10.0))
    (tmp_path / "c.toml").write_text(TWO_BOARDS)
    # DieHardNet: 300 s, critical 2, tolerable 3; Baseline: 200 s, critical 6, tolerable 1, one crash
    dut_log(logs, T0 + timedelta(minutes=1), host="dut1", bench="DieHardNet", iters=300,
            sdc_at={10: True, 50: True, 90: False, 130: False, 170: False})  # fmt: skip
    dut_log(logs, T0 + timedelta(minutes=10), host="dut1", bench="Baseline", iters=200, end="none",
            sdc_at={k: k != 70 for k in range(10, 150, 20)})  # fmt: skip
    dut_log(logs, T0 + timedelta(minutes=20), host="dut2", bench="Baseline", iters=100, sdc_at={5: True})
    res = fit(tmp_path / "c.toml", [logs], [tmp_path / "flux.txt"], legacy=True)
    grp = res.groups.set_index(["group", "error_class"])
    f_ref, f_base = 300 * 10 * 1e5, 200 * 10 * 1e5
    ref = grp.loc[("dut1/DieHardNet/OFF", "sdc_critical")]
    assert ref["events"] == 2 and ref["fig7_norm"] == 1.0 and ref["fluence_n_cm2"] == pytest.approx(f_ref)
    for cls, n, f in (("sdc_tolerable", 3, f_ref), ("due", 0, f_ref)):
        row = grp.loc[("dut1/DieHardNet/OFF", cls)]
        assert (row["fig7_norm"], row["fig7_norm_lo"], row["fig7_norm_hi"]) == pytest.approx(
            intervals.rate_ratio(n, f, 2, f_ref), nan_ok=True)  # fmt: skip
    for cls, n in (("sdc_critical", 6), ("sdc_tolerable", 1), ("due", 1)):
        row = grp.loc[("dut1/Baseline/OFF", cls)]
        want = intervals.rate_ratio(n, f_base, 2, f_ref)
        assert (row["fig7_norm"], row["fig7_norm_lo"], row["fig7_norm_hi"]) == pytest.approx(want)
        assert row["fig7_norm_lo"] < row["fig7_norm"] < row["fig7_norm_hi"]
        assert row["fig7_reference"] == "dut1/DieHardNet/OFF sdc_critical"
    assert grp.loc[("dut1/Baseline/OFF", "sdc_critical"), "fig7_norm"] == pytest.approx(6 / 200 / (2 / 300))
    assert math.isnan(grp.loc[("dut2/Baseline/OFF", "sdc_critical"), "fig7_norm"])
    assert any("Fig. 7 panel dut2" in n and "no group matches 'model=diehardnet'" in n for n in res.notes)
    # natural exposure: the fluence as time at sea level (13 n/cm^2/h)
    assert ref["natural_equiv_h"] == pytest.approx(f_ref / 13) and ref["natural_equiv_years"] == pytest.approx(
        f_ref / 13 / 8766)  # fmt: skip
    r = res.runs.set_index("benchmark").loc["DieHardNet"]
    assert r["natural_equiv_h"] == pytest.approx(f_ref / 13)
    # --legacy: the ipdps2021 bar, 1.96 x value / sqrt(N), also below N = 40
    crit = grp.loc[("dut1/Baseline/OFF", "sdc_critical")]
    assert crit["fit_legacy_err"] == pytest.approx(1.96 * crit["fit"] / math.sqrt(6))
    assert "1.96 x value / sqrt(N)" in res.meta["legacy_bar"]
