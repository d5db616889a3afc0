"""A real campaign gives the same cross sections however its files are split, copied or grouped.

On the real ChipIR count logs of 24 and 27 Nov 2016 and the two real Darknet runs on carol-k402 inside them:
daily count logs as one timeline, events without beam apart, results that follow from file contents alone,
no critical/tolerable split where the logs have none, grouping by #HEADER configuration, ECC from the campaign,
same-named logs in different folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from diehardlab.analysis.fit import fit, write_result
from diehardlab.analysis.report import build_report

from tests.analysis.conftest import chipir_2016 as campaign

D24 = "2016_11_24_01_26_02_cudaDarknet_carol-k402.log"
D27 = "2016_11_27_01_09_38_cudaDarknet_carol-k402.log"


def rows_of(path: Path) -> list[str]:
    """The rows of a real count log (its lines end in CR CR LF)."""
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("Data From")]


def redate(rows: list[str], shift) -> list[tuple[datetime, str]]:
    out = []
    for ln in rows:
        d, t, rest = ln.split(" ", 2)
        when = datetime.strptime(f"{d} {t}", "%d/%m/%Y %H:%M:%S") + shift
        out.append((when, f"{when:%d/%m/%Y %H:%M:%S} {rest}"))
    return out


def write_log(path: Path, rows: list[str]) -> Path:
    path.write_text("Data From ChipIR\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def midnight(tmp_path, beam_logs, facility_logs):
    """The real 27 Nov Darknet run with its #BEGIN moved to 23:59:00 of 26 Nov, and the real 27 Nov count log
    re-dated by the same shift and cut at midnight into the two daily files ChipIR would have written."""
    shift = datetime(2016, 11, 26, 23, 59, 0) - datetime(2016, 11, 27, 1, 9, 38)
    rows = redate(rows_of(facility_logs / "countlog-2016-11-27.txt"), shift)
    day1 = [r for when, r in rows if when.day == 26]
    day2 = [r for when, r in rows if when.day == 27]
    logs = tmp_path / "logs"
    logs.mkdir()
    text = (beam_logs / D27).read_text()
    (logs / D27).write_text(
        text.replace("#BEGIN Y:2016 M:11 D:27 Time:01:09:38", "#BEGIN Y:2016 M:11 D:26 Time:23:59:00")
    )
    return tmp_path, logs, day1, day2


def test_daily_count_logs_are_one_timeline(midnight, beam_logs, facility_logs):
    """Before: 'no flux log covers' (each file covers half of the run). Now the 3 s between the two files is
    bridged and reported, and the fluence is exactly the one of the unsplit real log."""
    tmp, logs, day1, day2 = midnight
    c = campaign(tmp)
    f26, f27 = write_log(tmp / "countlog-2016-11-26.txt", day1), write_log(tmp / "countlog-2016-11-27.txt", day2)
    res = fit(c, [logs], [f26, f27])
    r = res.runs.iloc[0]
    assert not r["excluded"], r["exclude_reason"]
    assert r["start_utc"] == "2016-11-26T23:59:00+00:00" and r["end_utc"].startswith("2016-11-27T00:00:54")
    assert r["flux_gap_s"] == pytest.approx(3.002, abs=1e-3) and r["beam_off_s"] == 0
    assert any("countlog-2016-11-27.txt:2: gap between files" in n and "bridged" in n for n in res.notes)
    (tmp / "orig").mkdir()
    shutil.copy(beam_logs / D27, tmp / "orig" / D27)
    whole = fit(c, [tmp / "orig"], [facility_logs / "countlog-2016-11-27.txt"]).runs.iloc[0]
    assert r["fluence_n_cm2"] == pytest.approx(whole["fluence_n_cm2"], rel=1e-12)
    assert r["fluence_n_cm2"] == pytest.approx(5.708749e8, rel=1e-6)

    # ChipIR's counter starts again with each day's file: the interval across midnight runs backwards. It is
    # counted at the neighbouring rate (said, with file:line), not as beam off and not as a negative count.
    first = day2[0].split()
    day2_reset = []
    for ln in day2:
        f = ln.split()
        f[6] = f"{int(f[6]) - int(first[6]) + 17:011d}"
        day2_reset.append(" ".join(f[:3]) + "  " + " ".join(f[3:]))
    write_log(f27, day2_reset)
    res = fit(c, [logs], [f26, f27])
    r = res.runs.iloc[0]
    assert not r["excluded"] and r["fluence_n_cm2"] == pytest.approx(whole["fluence_n_cm2"], rel=1e-5)
    assert any("countlog-2016-11-27.txt:2: the counter went backwards" in n and "neighbouring rate" in n
               for n in res.notes)  # fmt: skip

    # Ten minutes of rows missing around midnight: beam of unknown state there, never beam off: excluded.
    write_log(f26, day1[:-100])
    write_log(f27, day2[100:])
    res = fit(c, [logs], [f26, f27])
    r = res.runs.iloc[0]
    assert r["excluded"] and "beam state unknown" in r["exclude_reason"]
    assert r["flux_unknown_s"] == pytest.approx(r["kernel_time_s"]) and r["beam_off_s"] == 0
    assert res.groups.empty
    res = fit(c, [logs], [f26, f27], flux_gap_s=900)  # a user who knows the beam ran may bridge it
    assert not res.runs.iloc[0]["excluded"]


def test_events_without_beam_are_counted_apart(tmp_path, beam_logs, facility_logs):
    """The 24 Nov run read on UK time lies in a stall of the counter: its 2 SDC are events_beam_off, in no
    cross section, and runs.csv, fit.csv and the report say so (before: pooled, sigma infinite)."""
    c = campaign(tmp_path, "Europe/London")
    res = fit(c, [beam_logs / D24, beam_logs / D27], [facility_logs / f"countlog-2016-11-{d}.txt" for d in (24, 27)])
    r24 = res.runs.set_index("name").loc[D24]
    assert r24["fluence_n_cm2"] == 0 and r24["events_beam_off"] == 2 and r24["flag"] == "events without beam"
    g = res.groups[res.groups["group"].str.contains("no_abft")].set_index("error_class")
    assert g.loc["sdc", "events"] == 0 and g.loc["sdc", "events_beam_off"] == 2
    assert "no fluence" in g.loc["sdc", "note"]
    write_result(res, tmp_path / "fit")
    fit_csv = pd.read_csv(tmp_path / "fit" / "fit.csv")
    assert fit_csv["events_beam_off"].sum() == 2
    text = build_report(tmp_path / "r.md", fit=tmp_path / "fit").read_text()
    assert "Events in runs that received no fluence" in text and "2 SDC" in text


def test_the_same_campaign_copied_gives_byte_identical_results(tmp_path, beam_logs, facility_logs):
    """The campaign as written (log files with their times: the 27 Nov log last written 400 s after its start, a
    plausible end) and copies made with cp, tar and git, which do not all keep file times: fit.csv and events.csv
    are byte-identical. With --wall-end mtime the file times are read and the copies differ (the old default)."""
    src = tmp_path / "campaign"
    (src / "logs").mkdir(parents=True)
    for name in (D24, D27):
        shutil.copy(beam_logs / name, src / "logs" / name)
    for d in (24, 27):
        shutil.copy(facility_logs / f"countlog-2016-11-{d}.txt", src / f"countlog-2016-11-{d}.txt")
    campaign(src, "America/Sao_Paulo")
    end = datetime.fromisoformat("2016-11-27T03:16:18+00:00").timestamp()  # #BEGIN (UTC-2) + 400 s
    os.utime(src / "logs" / D27, (end, end))
    copies = {"original": src}
    subprocess.run(["cp", "-r", str(src), str(tmp_path / "cp")], check=True)
    copies["cp"] = tmp_path / "cp"
    (tmp_path / "tar").mkdir()
    tar = subprocess.run(["tar", "-C", str(src), "-cf", "-", "."], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-C", str(tmp_path / "tar"), "-xf", "-"], input=tar, check=True)
    copies["tar"] = tmp_path / "tar"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(src)], check=True)
    subprocess.run([*git, "-C", str(src), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(src), "commit", "-qm", "campaign"], check=True)
    subprocess.run([*git, "clone", "-q", str(src), str(tmp_path / "git")], check=True)
    copies["git"] = tmp_path / "git"
    out = {}
    for how, root in copies.items():
        res = fit(root / "campaign.toml", [root / "logs"], [root / f"countlog-2016-11-{d}.txt" for d in (24, 27)])
        write_result(res, tmp_path / f"fit-{how}")
        out[how] = {n: (tmp_path / f"fit-{how}" / n).read_bytes() for n in ("fit.csv", "events.csv")}
    assert out["cp"] == out["tar"] == out["git"] == out["original"]
    assert os.stat(copies["cp"] / "logs" / D27).st_mtime != end  # the copy really lost the time
    mtime = {
        how: fit(root / "campaign.toml", [root / "logs"], [root / f"countlog-2016-11-{d}.txt" for d in (24, 27)],
                 wall_end="mtime").runs.set_index("name").loc[D27, "fluence_n_cm2"]
        for how, root in (("original", src), ("cp", copies["cp"]))
    }  # fmt: skip
    assert mtime["original"] > 3 * mtime["cp"]  # what the old default did to this real run


def test_unknown_split_is_empty_not_tolerable(tmp_path, beam_logs, facility_logs):
    """The real Darknet logs carry no diehardnet detail lines: their SDCs are neither critical nor tolerable as
    far as anyone measured (before: all tolerable, in 'fit' and 'diehard logs')."""
    from diehardlab.analysis.inventory import inventory

    from diehardlab.formats.parser import summarize

    s = summarize(beam_logs / D24)
    assert s.sdc_count == 2 and s.critical_sdc is None and s.tolerable_sdc is None
    rows, _ = inventory(beam_logs)
    d = next(r for r in rows if r["path"] == D24)
    assert (d["sdc"], d["critical_sdc"], d["tolerable_sdc"]) == (2, "", "")
    c = campaign(tmp_path, "America/Sao_Paulo")
    res = fit(c, [beam_logs / D24], [facility_logs / "countlog-2016-11-24.txt"])
    g = res.groups.set_index("error_class")
    assert g.loc["sdc", "events"] == 2
    assert pd.isna(g.loc["sdc_tolerable", "events"]) and pd.isna(g.loc["sdc_critical", "events"])
    assert pd.isna(g.loc["sdc_tolerable", "fit"]) and "split unknown" in g.loc["sdc_tolerable", "note"]
    assert pd.isna(res.runs.iloc[0]["sdc_tolerable"])
    write_result(res, tmp_path / "fit")
    assert ",sdc_tolerable,," in (tmp_path / "fit" / "fit.csv").read_text()  # an empty count, not 2
    text = build_report(tmp_path / "r.md", fit=tmp_path / "fit").read_text()
    assert "Critical/tolerable split unknown" in text and "carol-k402/cudaDarknet/-" in text


def test_grouping_by_header_configuration(tmp_path, beam_logs, facility_logs):
    """The two real Darknet runs on one board use other inputs and ABFT modes: two groups by default (the keys
    that differ are named), one when the user groups without the configuration, and header.<key> works."""
    c = campaign(tmp_path, "America/Sao_Paulo")
    flux = [facility_logs / f"countlog-2016-11-{d}.txt" for d in (24, 27)]
    res = fit(c, [beam_logs / D24, beam_logs / D27], flux)
    labels = sorted(set(res.groups["group"]))
    assert labels == [
        "carol-k402/cudaDarknet/-/abft=dumb_abft,img_list_path=voc.2012.1K.txt",
        "carol-k402/cudaDarknet/-/abft=no_abft,img_list_path=caltech.pedestrians.1K.txt",
    ]
    assert any("runs differ in #HEADER abft, img_list_path" in n for n in res.notes)
    pooled = fit(c, [beam_logs / D24, beam_logs / D27], flux, group_by=["board", "benchmark"])
    assert list(pooled.groups[pooled.groups["error_class"] == "sdc"]["events"]) == [4]
    by_abft = fit(c, [beam_logs / D24, beam_logs / D27], flux, group_by=["board", "header.abft"])
    assert sorted(set(by_abft.groups["group"])) == ["carol-k402/dumb_abft", "carol-k402/no_abft"]


def test_ecc_from_the_campaign_and_same_named_logs(tmp_path, beam_logs, facility_logs):
    """Kepler/ECCON and Kepler/ECCOFF hold logs with one name (names before 2017 carry no ECC field) but other
    contents: two runs, ECC from the campaign's folder rules, two groups. A copy of a run in a third folder (a
    server copy that lost its last lines) is the same run (before: one run, ECC '-', pooled)."""
    kepler = tmp_path / "Kepler"
    for sub in ("ECCON", "ECCOFF", "server"):
        (kepler / sub).mkdir(parents=True)
    shutil.copy(beam_logs / D24, kepler / "ECCON" / D24)
    shutil.copy(beam_logs / D27, kepler / "ECCOFF" / D24)  # another run under the same name
    lines = (beam_logs / D24).read_text().splitlines(keepends=True)
    (kepler / "server" / D24).write_text("".join(lines[:600]))
    rules = (
        '[[analysis.ecc]]\nfolder = "Kepler/ECCON"\nvalue = "ON"\n'
        '[[analysis.ecc]]\nfolder = "Kepler/ECCOFF"\nvalue = "off"\n'
        '[[analysis.ecc]]\nboard = "carol-k40"\nvalue = "ON"\n'  # misspelt: it applies to nothing, and is said
    )
    c = campaign(tmp_path, "America/Sao_Paulo", analysis=rules)
    res = fit(c, [kepler], [facility_logs / f"countlog-2016-11-{d}.txt" for d in (24, 27)], group_by=["board", "ecc"])
    runs = res.runs.set_index("run")
    assert sorted(runs.index) == [f"ECCOFF/{D24}", f"ECCON/{D24}"]
    on, off = runs.loc[f"ECCON/{D24}"], runs.loc[f"ECCOFF/{D24}"]
    assert (on["ecc"], on["copies"], on["sdc"]) == ("ON", 2, 2) and on["ecc_source"].startswith("campaign")
    assert (off["ecc"], off["copies"], off["sdc"]) == ("OFF", 1, 2)
    sdc = res.groups[res.groups["error_class"] == "sdc"].set_index("group")["events"]
    assert dict(sdc) == {"carol-k402/OFF": 2, "carol-k402/ON": 2}
    assert any("2 logs with this name whose contents differ" in n for n in res.notes)
    assert not any("fig7_reference" in n for n in res.notes)  # the default reference may match nothing
    flux = [facility_logs / "countlog-2016-11-24.txt"]
    other = fit(c, [kepler / "ECCON"], flux, fig7_reference="model=diehardnet,ecc=on")  # a chosen one must match
    assert "fig7_reference 'model=diehardnet,ecc=on' matches no group: no Fig. 7 normalisation" in other.notes
    unused = [n for n in res.notes if "[[analysis.ecc]] rule" in n]
    assert unused == [
        "campaign [[analysis.ecc]] rule 3 (board='carol-k40') sets the ECC of no log: check its board, folder and "
        "dates against the log names and folders"
    ]
