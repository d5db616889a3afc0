"""Facility logs: both ChipIR variants, LANSCE, stalls (beam off), gaps, known-answer fluence."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from diehardlab.analysis.flux import exposure, factor_schedule, merge_flux_logs, read_flux_log
from hypothesis import given, settings
from hypothesis import strategies as st

from diehardlab.errors import DataError
from tests.analysis.conftest import T0, chipir_rows, write

UTC = timezone.utc


def ts(seconds: float) -> float:
    return (T0 + timedelta(seconds=seconds)).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize("sep", [" ", ";"])
def test_known_fluence_with_beam_off_and_gap(tmp_path, sep):
    # 10 counts/s; beam off (counter stalled) 100..160 s; logger rows missing 300..360 s
    log = read_flux_log(write(tmp_path / "c.txt", chipir_rows(600, 10.0, off=(99, 159), gap=(300, 360), sep=sep)))
    assert log.kind == "chipir" and not log.malformed
    factor = factor_schedule(2.0e5)
    e = exposure(log, ts(51), ts(450), factor, attenuation=0.5, max_gap_s=30)
    # counting time inside [51, 450] minus the 60 s stall (rows at 99 and 159 bound it): 339 s x 10 counts/s
    assert e.fluence == pytest.approx(339 * 10 * 2.0e5 * 0.5, rel=1e-9)
    assert e.beam_off_s == pytest.approx(60.0)
    assert e.beam_on_s == pytest.approx(339.0)
    assert e.gap_s == pytest.approx(60.0)  # the one 60 s interval 300..360 lies inside
    assert e.covered
    assert e.mean_flux == pytest.approx(e.fluence / 399)


def test_window_outside_the_log_is_not_covered(tmp_path):
    log = read_flux_log(write(tmp_path / "c.txt", chipir_rows(300, 10.0)))
    assert not exposure(log, ts(200), ts(400), factor_schedule(1.0)).covered
    assert exposure(log, ts(10), ts(290), factor_schedule(1.0)).covered


def test_beam_windows_restrict_the_count(tmp_path):
    log = read_flux_log(write(tmp_path / "c.txt", chipir_rows(600, 10.0)))
    e = exposure(log, ts(0), ts(600), factor_schedule(1.0), beam_windows=[(ts(30), ts(90)), (ts(500), ts(900))])
    assert e.fluence == pytest.approx(10 * (60 + 100))
    assert e.window_s == pytest.approx(160)


def test_dated_factor(tmp_path):
    log = read_flux_log(write(tmp_path / "c.txt", chipir_rows(600, 10.0)))
    f = factor_schedule(None, [(ts(0), 1.0), (ts(300), 3.0)])
    assert exposure(log, ts(0), ts(600), f).fluence == pytest.approx(10 * 300 * 1.0 + 10 * 300 * 3.0)


def test_malformed_rows_are_counted_with_line_numbers(tmp_path):
    rows = chipir_rows(30, 10.0)
    rows.insert(3, "24/11/2016 garbage")
    log = read_flux_log(write(tmp_path / "c.txt", rows))
    assert [ln for ln, _ in log.malformed] == [4]
    assert "c.txt:4: malformed flux row" in log.notes()[0]


def test_lansce_rows_and_clock_zone(tmp_path):
    from zoneinfo import ZoneInfo

    start = datetime(2026, 7, 1, 8, 0, 0)
    rows = [
        f"{(start + timedelta(seconds=s)).strftime('%Y-%m-%d %H:%M:%S')},250 {1000 + 7 * s}" for s in range(0, 601, 1)
    ]
    log = read_flux_log(write(tmp_path / "lansce.txt", rows), ZoneInfo("America/Denver"))
    assert log.kind == "lansce"
    # Denver is UTC-6 in July
    assert log.start == datetime(2026, 7, 1, 14, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert np.all(np.diff(log.counts) == 7)


def test_not_a_flux_log(tmp_path):
    with pytest.raises(DataError, match="not a facility log"):
        read_flux_log(write(tmp_path / "x.txt", ["hello world"]))


def test_real_chipir_log_parses_completely(facility_logs):
    log = read_flux_log(facility_logs / "countlog-2016-11-24.txt")
    assert not log.malformed and log.resets == 0
    assert len(log.t) == 10880
    assert log.start == datetime(2016, 11, 24, 0, 0, 2, 411000, tzinfo=UTC).timestamp()
    assert log.end == datetime(2016, 11, 24, 9, 4, 24, 186000, tzinfo=UTC).timestamp()
    # the stall from 01:25:54.460 to 01:27:27.532 is beam off
    a = datetime(2016, 11, 24, 1, 25, 0, tzinfo=UTC).timestamp()
    b = datetime(2016, 11, 24, 1, 28, 0, tzinfo=UTC).timestamp()
    e = exposure(log, a, b, factor_schedule(1.0))
    assert e.beam_off_s == pytest.approx(93.072, abs=1e-3)
    assert e.fluence == pytest.approx(1671498 - 1670640 - 3 * 0.0, abs=60)


def test_merged_semicolon_file_with_repeated_header_and_overlap(tmp_path):
    rows = chipir_rows(300, 10.0, sep=";")
    merged = rows[:60] + rows[40:]  # a second piece that overlaps the first, with its own header line
    merged.insert(60, "Data From ChipIR")
    log = read_flux_log(write(tmp_path / "merged.txt", merged))
    assert len(log.t) == len(rows) - 1 and log.duplicates == 20 and not log.malformed
    assert exposure(log, ts(0), ts(300), factor_schedule(1.0)).fluence == pytest.approx(3000)
    assert any("repeat an earlier time stamp" in n for n in log.notes())


def test_edges_within_two_rows_are_extrapolated(tmp_path):
    """A run whose whole-second #BEGIN lies a fraction of a row before the log's first row is covered."""
    log = read_flux_log(write(tmp_path / "c.txt", chipir_rows(300, 10.0)))
    assert log.edge_slack_s == 6.0
    e = exposure(log, ts(-2.5), ts(302), factor_schedule(1.0))
    assert e.covered and e.fluence == pytest.approx(10 * 304.5) and e.beam_on_s == pytest.approx(304.5)
    assert not exposure(log, ts(-7), ts(100), factor_schedule(1.0)).covered


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.floats(min_value=0.0, max_value=600.0, allow_nan=False), min_size=3, max_size=6),
    rate=st.floats(min_value=0.5, max_value=50.0),
)
def test_fluence_is_additive_over_adjacent_windows(tmp_path_factory, cuts, rate):
    path = tmp_path_factory.mktemp("add") / "c.txt"
    log = read_flux_log(write(path, chipir_rows(600, rate, off=(200, 260), gap=(400, 450))))
    f = factor_schedule(3.0)
    t = sorted(cuts)
    parts = [exposure(log, ts(a), ts(b), f) for a, b in itertools.pairwise(t)]
    whole = exposure(log, ts(t[0]), ts(t[-1]), f)
    assert sum(p.fluence for p in parts) == pytest.approx(whole.fluence, rel=1e-9, abs=1e-6)
    assert sum(p.beam_off_s for p in parts) == pytest.approx(whole.beam_off_s, abs=1e-6)
    assert whole.beam_on_s + whole.beam_off_s == pytest.approx(t[-1] - t[0], abs=1e-6)


def test_bad_count_log_rows_are_said_with_file_and_line(tmp_path):
    """Rows out of order, a repeated row, a counter reset and a truncated last line: each gives a note naming
    file:line and what was done, and the fluence stays right (no silent gap, no double count)."""
    rows = chipir_rows(300, 10.0)  # header + 101 rows, 10 counts/s
    bad = [*rows[:20], rows[22], rows[21], rows[20], *rows[23:60], rows[59], *rows[60:]]
    # a reset at row 80: the counter starts again from 5 and counts on
    base = int(bad[80].split()[6])
    for i in range(80, len(bad)):
        f = bad[i].split()
        f[6] = f"{int(f[6]) - base + 5:011d}"
        bad[i] = " ".join(f[:3]) + "  " + " ".join(f[3:])
    path = tmp_path / "c.txt"
    path.write_text("\n".join(bad) + "\n" + bad[-1][:40])  # the logger died mid-row
    log = read_flux_log(path)
    notes = "\n".join(log.notes())
    assert "c.txt:22: rows out of time order" in notes  # the first row that went back in time
    assert "c.txt: 1 rows repeat an earlier time stamp (merged file; lines 61)" in notes
    assert f"c.txt:{len(bad) + 1}: the last line is cut short" in notes
    assert "c.txt:81: the counter went backwards (a reset)" in notes and "neighbouring rate" in notes
    e = exposure(log, ts(0), ts(300), factor_schedule(1.0))
    assert e.fluence == pytest.approx(3000, rel=1e-9) and e.beam_off_s == 0 and e.gap_s == pytest.approx(3.0)


def test_overlapping_files_are_never_counted_twice(tmp_path):
    """Two files for the same hours (a merged export beside the daily file): the rows of the later-starting file
    inside hours already covered are dropped, with a note naming that file's lines."""
    rows = chipir_rows(600, 10.0)
    a = write(tmp_path / "a.txt", rows[:150])
    b = write(tmp_path / "b.txt", [rows[0], *rows[100:]])
    log = merge_flux_logs([read_flux_log(b), read_flux_log(a)])
    assert log.files == [str(a), str(b)] and len(log.t) == 201
    assert any("b.txt:2-51: 50 rows fall in hours another flux file already covers" in n for n in log.notes())
    assert exposure(log, ts(0), ts(600), factor_schedule(1.0)).fluence == pytest.approx(6000)


def test_a_counter_spike_is_dropped_loudly(facility_logs):
    """Issue 18: one row of the real 24 Nov count log with its fission counter x10 (1736875 -> 17368750) turned
    3.98e8 into 7.8e12 n/cm^2, with only a note that the counter went backwards. The neighbours show the spike:
    the row is dropped, with file:line, and the fluence is the clean one."""
    lines = (facility_logs / "countlog-2016-11-24.txt").read_text().split("\n")
    k = next(i for i, ln in enumerate(lines) if ln.startswith("24/11/2016 03:26:02"))
    assert "00001736875" in lines[k]
    spiked = lines.copy()
    spiked[k] = lines[k].replace("00001736875", "00017368750")
    a = datetime(2016, 11, 24, 3, 26, 2, tzinfo=UTC).timestamp()
    b = a + 79.492019
    clean = exposure(read_flux_log(facility_logs / "countlog-2016-11-24.txt"), a, b, factor_schedule(5e5))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "countlog-2016-11-24.txt"
        p.write_text("\n".join(spiked))
        log = read_flux_log(p)
        e = exposure(log, a, b, factor_schedule(5e5))
    assert log.spikes == 1 and log.resets == 0
    assert any(
        f"countlog-2016-11-24.txt:{k + 1}: counter spike 17368750" in n and "row dropped" in n for n in log.notes()
    )
    assert e.fluence == pytest.approx(clean.fluence, rel=2e-3) and e.fluence == pytest.approx(3.98e8, rel=2e-3)


def test_an_implausible_counter_step_is_not_beam(tmp_path):
    """A counter that jumps by orders of magnitude and stays there (no row comes back to confirm a spike): the
    interval is above the facility's plausible flux, counted at the neighbouring rate and said."""
    rows = chipir_rows(300, 10.0)
    for i in range(50, len(rows)):
        f = rows[i].split()
        f[6] = f"{int(f[6]) + 50_000_000:011d}"
        rows[i] = " ".join(f[:3]) + "  " + " ".join(f[3:])
    log = read_flux_log(write(tmp_path / "c.txt", rows), max_rate=lambda t: np.full(len(t), 1e3))
    assert any("c.txt:51: the counter jumped implausibly" in n for n in log.notes())
    assert exposure(log, ts(0), ts(300), factor_schedule(1.0)).fluence == pytest.approx(3000)
