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


def test_a_large_log_is_read_in_bounded_memory(tmp_path):
    """Issue 18: 'diehard logs' on a 258 MB file held 1.1 GB (the file read whole, decoded, split). It streams: the
    peak RSS of reading a 32 MB log is within a few MB of reading a tiny one (before: +130 MB here)."""
    import subprocess
    import sys

    block = "".join(f"#IT {i} KerTime:0.0962310 AccTime:{i * 0.096231:.7f}\n" for i in range(1000))
    block += "#ERR batch:0 img:3 i:7 g:1.250000e-01 o:1.500000e-01\n"
    block += "#SDC Ite:999 KerTime:0.1 AccTime:96.2 KerErr:1 AccErr:1\n"
    big = tmp_path / "big" / "2026_01_01_00_00_00_x_ECC_ON_h.log"
    small = tmp_path / "small" / big.name
    big.parent.mkdir()
    small.parent.mkdir()
    with open(big, "w") as f:
        f.write("#HEADER x\n#BEGIN Y:2026 M:1 D:1 Time:00:00:00\n")
        for _ in range(32 * 2**20 // len(block)):
            f.write(block)
    small.write_text("#HEADER x\n#BEGIN Y:2026 M:1 D:1 Time:00:00:00\n" + block)
    code = (
        "import resource, sys\nfrom diehardlab.cli import main\nrc = main(['logs', sys.argv[1], '--jobs', '1'])\n"
        "print('RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nraise SystemExit(rc)"
    )
    peak = {}
    for name, folder in (("small", small.parent), ("big", big.parent)):
        r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        peak[name] = int(r.stdout.split("RSS_KB")[1]) / 1024
    n = 32 * 2**20 // len(block)
    assert f"1 logs, {n} SDC records" in r.stdout  # every SDC of the big file counted
    assert peak["big"] - peak["small"] < 16, peak
