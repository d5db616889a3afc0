"""``diehard logs``: the inventory of a folder, CSV output, time zones and a folder of thousands of files."""

from __future__ import annotations

import csv
import shutil

import pytest
from diehardlab.analysis.inventory import COLUMNS, inventory, main

from diehardlab.errors import DataError
from diehardlab.timezones import get_zone


def test_inventory_of_the_real_samples(beam_logs, tmp_path, capsys):
    out_csv = tmp_path / "inv.csv"
    assert main([str(beam_logs), "--csv", str(out_csv), "--tz", "Europe/London"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == COLUMNS and len(rows) == 9
    by = {r["path"]: r for r in rows}
    d = by["2016_11_24_01_26_02_cudaDarknet_carol-k402.log"]
    assert (d["sdc"], d["iterations"], d["aborted"], d["ended"]) == (
        "2", "825", "amount of errors equals of the last iteration", "True",
    )  # fmt: skip
    # Nov 2016 in London is GMT: the wall time is UTC.
    assert d["start_utc"] == "2016-11-24T01:26:02Z" and d["start_source"] == "#BEGIN"
    q = by["2017_09_10_15_18_35_cudaQuickSortCDP_ECC_OFF_carol-k201.log"]
    assert q["ecc"] == "OFF" and q["start_utc"] == "2017-09-10T14:18:35Z"  # BST
    mid = by["2016_12_11_17_47_28_cudaDarknet_carol-k402.log"]
    assert mid["start_source"] == "file name" and mid["ended"] == "False"
    assert "9 logs, 15 SDC records" in capsys.readouterr().out


def test_no_time_zone_no_utc(beam_logs):
    rows, _ = inventory(beam_logs)
    assert all(r["start_utc"] == "" for r in rows)


def test_our_logs_are_utc_without_being_told(tmp_path):
    from diehardlab.formats.writer import LogWriter

    w = LogWriter(tmp_path, "b", "h", ecc=True, hostname="x")
    w.end_log_file()
    (row,), _ = inventory(tmp_path)
    assert row["start_utc"].endswith("Z")


def test_thousands_of_logs_in_nested_folders(beam_logs, tmp_path):
    for k in range(60):
        d = tmp_path / f"host{k % 3}"
        d.mkdir(exist_ok=True)
        for src in beam_logs.glob("*.log"):
            shutil.copy(src, d / src.name.replace(".log", f"_{k}.log").replace("_carol", f"x{k}_carol"))
    rows, notes = inventory(tmp_path, jobs=2)
    assert len(rows) == 540 and not notes
    assert sum(int(r["sdc"]) for r in rows) == 60 * 15


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        inventory(tmp_path / "nope")


def test_bad_time_zone_says_what_to_write():
    with pytest.raises(Exception, match="IANA name"):
        get_zone("Mars/Olympus")
