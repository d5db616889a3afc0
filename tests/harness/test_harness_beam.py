"""Beam simulator pieces: spec validation, Poisson rates, beam-off periods, the ChipIR count log, truth file."""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from diehardlab.harness.beam import (
    ANCHOR,
    BeamTable,
    ChipirLog,
    PoissonSchedule,
    TruthFile,
    beam_on,
    beam_on_seconds,
    load_spec,
    run_seed,
)

from diehardlab.errors import ConfigError
from tests.conftest import ROOT

SPECS = sorted((ROOT / "setups" / "beam").glob("*.toml"))
# The row format of the real 2016 ChipIR sample (tests/data/facility).
CHIPIR_ROW = re.compile(
    r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2} \.\d{3}  (\d{11}) (\d{11}) (\d{11}) (\d{11}) [\d.]+ [\d.]+$"
)


def test_shipped_specs_load():
    names = {p.name for p in SPECS}
    assert {"simulated-chipir.toml", "demo-quick.toml"} <= names
    for p in SPECS:
        spec = load_spec(p)
        cs = spec.cross_section_cm2
        if cs.strike == 0:
            assert spec.true_sigma()["sdc"] == pytest.approx(cs.corrupt + cs.nan)
        else:  # a strike's SDC share depends on the network: the simulator measures it and completes the truth
            assert "sdc" not in spec.true_sigma() and spec.true_sigma()["strike"] == cs.strike


def test_real_chipir_sample_matches_our_row_pattern(facility_logs):
    # The sample ends its lines with CR CR LF.
    lines = [line for line in (facility_logs / "countlog-2016-11-24.txt").read_text().splitlines() if line.strip()]
    assert lines[0] == "Data From ChipIR"
    assert all(CHIPIR_ROW.match(line) for line in lines[1:50])


def test_spec_errors_name_file_and_field(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[beam]\nflux_n_cm2_s = -1\nflux_factor = 1\n[cross_section_cm2]\ncorupt = 1e-8\n")
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    msg = str(e.value)
    assert str(p) in msg and "beam -> flux_n_cm2_s" in msg and "cross_section_cm2 -> corupt" in msg


def test_demo_quick_sequence_has_sdcs_crash_and_hang_within_20_s():
    # The demo relies on it: replay the schedule of successive runs (each ends at its first DUE).
    spec = load_spec(ROOT / "setups" / "beam" / "demo-quick.toml")
    total, kinds = 0.0, []
    for run in range(10):
        sched = PoissonSchedule(spec.rates(), run_seed(spec, run, "any-host", "any-bench"))
        while sched.upcoming is not None:
            ev = sched.pop_until(sched.upcoming.kernel_time_s + 1e-9)[0]
            kinds.append(ev.kind)
            if ev.kind in ("crash", "hang"):
                total += ev.kernel_time_s
                break
        if total > 20:
            break
        if "crash" in kinds and "hang" in kinds and sum(k in ("corrupt", "strike", "nan") for k in kinds) >= 3:
            break
    assert total <= 20 and "crash" in kinds and "hang" in kinds
    assert sum(k in ("corrupt", "strike", "nan") for k in kinds) >= 3


def test_poisson_rates_are_what_the_spec_says():
    rates = {"corrupt": 3.0, "nan": 1.0, "crash": 0.5, "hang": 0.0}
    sched = PoissonSchedule(rates, seed=5)
    horizon = 4000.0
    events = sched.pop_until(horizon)
    counts = {k: sum(e.kind == k for e in events) for k in rates}
    for k, r in rates.items():
        expected = r * horizon
        assert abs(counts[k] - expected) <= 4 * math.sqrt(max(expected, 1)), (k, counts[k], expected)
    times = [e.kernel_time_s for e in events]
    assert times == sorted(times) and times[-1] < horizon


def test_run_seeds_differ_per_run_and_dut_and_are_reproducible():
    spec = load_spec(ROOT / "setups" / "beam" / "simulated-chipir.toml")
    assert run_seed(spec, 0, "a", "b") == run_seed(spec, 0, "a", "b")
    assert len({run_seed(spec, r, h, "b") for r in range(3) for h in ("a", "c")}) == 6


def test_beam_off_periods_and_beam_on_seconds():
    beam = BeamTable(flux_n_cm2_s=1e6, flux_factor=1e5, off_every_s=10.0, off_duration_s=2.0, off_phase_s=3.0)
    t0 = ANCHOR + 1000.0
    assert beam_on(beam, t0 + 2.9) and not beam_on(beam, t0 + 3.1) and beam_on(beam, t0 + 5.01)
    # beam_on_seconds is the integral of beam_on: check it numerically over 35 s.
    step, acc = 0.001, 0.0
    for i in range(35000):
        acc += step * beam_on(beam, t0 + (i + 0.5) * step)
    assert beam_on_seconds(beam, t0 + 35) - beam_on_seconds(beam, t0) == pytest.approx(acc, abs=0.01)
    assert acc == pytest.approx(35 - 4 * 2, abs=0.01)


def test_chipir_log_gives_the_flux_back(tmp_path):
    beam = BeamTable(flux_n_cm2_s=2e6, flux_factor=1e5, row_interval_s=3.0, off_every_s=60.0, off_duration_s=9.0)
    log = tmp_path / "x.log"
    start = ANCHOR + 86400 * 30 + 12.0
    f = ChipirLog(log, beam, start)
    f.advance(start + 120)
    f.close(start + 120)
    lines = f.path.read_text().splitlines()
    assert lines[0] == "Data From ChipIR"
    rows = [CHIPIR_ROW.match(line) for line in lines[1:]]
    assert all(rows) and len(rows) == 42
    # The rows are UTC (a naive .timestamp() would read them in the machine's zone).
    times = [datetime.strptime(line[:19], "%d/%m/%Y %H:%M:%S").replace(tzinfo=timezone.utc) for line in lines[1:]]
    fission = [int(m.group(4)) for m in rows]
    flux = [(b - a) * beam.flux_factor / (tb - ta).total_seconds()
            for a, b, ta, tb in zip(fission, fission[1:], times, times[1:])]  # fmt: skip
    on = [x for x in flux if x > 0]
    assert len(on) < len(flux)  # a beam-off period stalls the counter
    total = (fission[-1] - fission[0]) * beam.flux_factor
    on_s = beam_on_seconds(beam, times[-1].timestamp() + 0.411) - beam_on_seconds(beam, times[0].timestamp() + 0.411)
    assert total == pytest.approx(beam.flux_n_cm2_s * on_s, rel=1e-3)
    # Counters depend on time alone: a second run's log agrees where they overlap.
    # Opened and closed at once, as diehardlab.demo writes its campaign-wide STEM.chipir.txt.
    g = ChipirLog(tmp_path / "facility", beam, start + 30)
    g.close(start + 40)
    assert g.path.name == "facility.chipir.txt"
    g_lines = g.path.read_text().splitlines()[1:]
    overlap = set(g_lines) & set(lines[1:])
    assert len(overlap) >= 3
    g_times = [datetime.strptime(line[:19], "%d/%m/%Y %H:%M:%S").replace(tzinfo=timezone.utc).timestamp() + 0.411
               for line in g_lines]  # fmt: skip
    assert g_times[0] <= start + 30 and g_times[-1] > start + 40  # the row before the start to the row after
    assert all(b - a == pytest.approx(beam.row_interval_s, abs=1e-3) for a, b in itertools.pairwise(g_times))


def test_truth_file_is_complete_json_after_each_save(tmp_path):
    spec = load_spec(ROOT / "setups" / "beam" / "simulated-chipir.toml")
    log = tmp_path / "2026_01_01_00_00_00_b_ECC_OFF_h.log"
    t = TruthFile(log, spec, "spec.toml", seed=3, run_index=0)
    t.events.append({"kind": "crash", "observed": "due"})
    t.save(1.5, 1.6)
    doc = json.loads(Path(str(log) + ".truth.json").read_text())
    assert doc["simulated"] is True and doc["log_file"] == log.name
    assert doc["true_sigma_cm2"]["due"] == pytest.approx(6e-9)
    assert doc["beam_on_kernel_time_s"] == 1.5 and doc["events"][0]["kind"] == "crash"
    assert set(doc["true_sigma_cm2"]) >= {"sdc", "due", "crash", "hang", "nan"}
