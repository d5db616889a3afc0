"""NVBitFI results: all 19 categories, dmesg with ; and :, not-injected runs, join with DUT logs, PVF."""

from __future__ import annotations

from datetime import timedelta

import pytest
from diehardlab.analysis.nvbitfi import CATEGORIES, parse_mapping, pvf, write_pvf
from scipy.stats import binomtest

from diehardlab.errors import ConfigError
from tests.analysis.conftest import T0
from tests.analysis.logs import dut_log
from tests.conftest import run_diehard


def make_campaign(tmp_path):
    """App 'lenet', group 1 (FP32), model 0: one injection per category 1..19, plus extra SDC (cat 17) ones;
    two of those write DUT logs (one critical, one tolerable); one injection is 'Error not injected'."""
    app = tmp_path / "logs" / "lenet"
    app.mkdir(parents=True)
    dut = tmp_path / "dut-logs"
    cats = [*range(1, 20), 17, 17, 1]
    lines = []
    for icount, cat in enumerate(cats):
        dmesg = "NVRM: Xid (PCI:0000:01:00): 13; Graphics Exception: ESR 0x5" if cat == 15 else ""
        lines.append(f"{icount};_Z5convPfS_;{icount % 3};{icount * 7};0;3:0x1a0:FFMA:{icount * 32}:0x00000400:"
                     f"1.25:{cat}:{dmesg}:value_before0x3f800000:value_after0x3f800400")  # fmt: skip
        folder = app / f"lenet-group1-model0-icount{icount}"
        folder.mkdir()
        (folder / "nvbitfi-injection-log-temp.txt").write_text(
            "Error not injected\n"
            if icount == len(cats) - 1
            else "mask: 0x400\nbeforeVal: 0x3f800000;afterVal: 0x3f800400\n"
        )
        if icount in (19, 20):  # the two extra category-17 SDCs write a DUT log
            log = dut_log(dut, T0 + timedelta(minutes=icount), iters=5, sdc_at={2: icount == 19})
            # 'diehard run --once' prints the absolute path; other benchmarks print where the DUT wrote it
            text = (
                f"Log file path {log.resolve()}" if icount == 19 else f"log: /var/radiation-benchmarks/log/{log.name}"
            )
            (folder / "stdout.txt").write_text(f"running...\n{text}\nresult: SDC\n")
    lines[1] = lines[1].split(":value_before")[0]  # an injection whose values were not recorded
    lines.append("garbage line without fields")
    (app / "results-mode-igid1.bfm0.23.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "logs", dut


def test_pvf_counts_every_category_and_joins_dut_logs(tmp_path):
    root, dut = make_campaign(tmp_path)
    res = pvf(root, dut)
    assert res.injections["injected"].sum() == 21 and len(res.injections) == 22
    cats = dict(zip(res.categories["category"], res.categories["count"]))
    assert set(cats) == set(CATEGORIES) and cats[19] == 1 and cats[17] == 3 and cats[1] == 1
    assert res.injections.set_index("category").loc[2, "value_before"] == ""
    assert res.injections.set_index("category").loc[3, "value_after"] == "0x3f800400"
    dmesg = res.injections.set_index("category").loc[15, "dmesg"]
    assert "Xid (PCI:0000:01:00): 13; Graphics" in dmesg
    assert any(":23: malformed NVBitFI result line" in n for n in res.notes)
    assert any("not made" in n for n in res.notes)
    p = res.pvf.set_index("outcome")
    assert p.loc["masked", "count"] == 3 and p.loc["due", "count"] == 3  # 4, 5 and 19
    assert p.loc["potential_due", "count"] == 10 and p.loc["sdc", "count"] == 5
    assert (p.loc["sdc_critical", "count"], p.loc["sdc_tolerable", "count"], p.loc["sdc_unjoined", "count"]) == (
        1,
        1,
        3,
    )
    assert p.loc["sdc", "pvf"] == pytest.approx(5 / 21)
    ci = binomtest(5, 21).proportion_ci(0.95, method="exact")
    assert (p.loc["sdc", "pvf_lo"], p.loc["sdc", "pvf_hi"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert set(res.pvf["group"]) == {"FP32"} and set(res.pvf["model"]) == {"FLIP_SINGLE_BIT"}


def test_mapping_is_configurable(tmp_path):
    root, _ = make_campaign(tmp_path)
    res = pvf(root, mapping=parse_mapping(["19=potential-due"]), method="wilson")
    p = res.pvf.set_index("outcome")
    assert p.loc["due", "count"] == 2 and p.loc["potential_due", "count"] == 11
    # without --dut-logs only the log printed with its absolute path is found
    assert (p.loc["sdc_critical", "count"], p.loc["sdc_unjoined", "count"]) == (1, 4)
    with pytest.raises(ConfigError, match="CATEGORY=OUTCOME"):
        parse_mapping(["20=sdc"])


def test_pvf_command_without_torch(tmp_path):
    root, dut = make_campaign(tmp_path)
    r = run_diehard("pvf", str(root), "--dut-logs", str(dut), "--out", str(tmp_path / "out"), block=("torch",))
    assert r.returncode == 0, r.stderr
    assert "sdc_critical" in r.stdout and (tmp_path / "out" / "pvf.csv").is_file()
    assert write_pvf(pvf(root), tmp_path / "o2")[0].name == "pvf.csv"
