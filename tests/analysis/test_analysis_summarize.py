"""``summarize``'s fast path gives exactly the fold of every record the record parser reads; every real sample
is read."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from diehardlab.analysis.flux import read_flux_log

from diehardlab.formats.filename import parse_log_name
from diehardlab.formats.parser import LogSummary, _fold, parse_file, read_lines, summarize
from tests.analysis.conftest import T0
from tests.analysis.logs import dut_log
from tests.conftest import ROOT

# The shared sample folder (../shared/data beside the repository), when this checkout has one.
SHARED = [p for p in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data") if p.is_dir()]


def folded(path: Path) -> LogSummary:
    """The summary by definition: every record of the record parser, folded in order."""
    s = LogSummary(path=str(path), lines=len(read_lines(path)))
    name = parse_log_name(path)
    if name:
        s.benchmark, s.hostname, s.ecc, s.name_time = name.benchmark, name.hostname, name.ecc, name.started
    for rec in parse_file(path):
        _fold(s, rec, 20)
    return s


def same(path: Path) -> None:
    assert dataclasses.asdict(summarize(path)) == dataclasses.asdict(folded(path))


def test_summarize_equals_fold_on_real_logs(beam_logs):
    paths = sorted(beam_logs.glob("*.log"))
    assert len(paths) == 9
    for p in paths:
        same(p)


def test_summarize_equals_fold_on_odd_lines(tmp_path):
    log = dut_log(tmp_path, T0, iters=20, sdc_at={3: True, 9: False}, iso=True)
    same(log)
    text = (
        "#IT 1 KerTime:0.1 AccTime:0.1\r\n#IT  2 KerTime:0.1 AccTime:0.2\n#IT 3 KerTime:0.1\n#ERR\n"
        "#ERR batch:0 critical-img:1 i:0 g:1 o:2 gt:1\n#SDC Ite:4 KerTime:0.1 AccTime:0.4 KerErr:1 AccErr:1\n"
        "#IT 2 KerTime:0.1 AccTime:0.5\n#INF Ite:5 KerTime:0.1 AccTime:0.6 KerInf:2\n"
        "#ITX\n#IT 7 KerTime:0.1 AccTime:0.7 tail\n#IT 8 KerTime:.5 AccTime:1.2\n#IT 9 KerTime:0.1 AccTime:1.3\n"
        "#IT 10 KerTime:0.1 AccTime:inf"
    )
    p = tmp_path / "2026_01_01_00_00_00_x_ECC_ON_h.log"
    p.write_text(text)
    same(p)
    s = summarize(p)
    assert s.dnn_details and s.unparsed == 4 and s.last_iteration == 10
    assert s.it_lines == 5


@pytest.mark.parametrize(
    "text",
    [
        "#SDC Ite:3 KerTime:0.1 AccTime:5.0 KerErr:1 AccErr:1\n#IT 4 KerTime:0.1 AccTime:5.1\n"
        "#IT 2 KerTime:0.1 AccTime:5.2",
        "#SDC 2015_11_19;  size:1024; 1\n#IT Ite:9 KerTime:0.2 AccTime:1.0\n"
        "#INF Ite:10 KerTime:0.1 AccTime:1.1 KerInf:1",
        "#INF Ite:10 KerTime:0.1 AccTime:1.1 KerInf:1\n#IT 11 KerTime:1e-3 AccTime:1.2\n"
        "#INF free text\n#INF DUE cause:x",
    ],
)
def test_summarize_order_of_first_records(tmp_path, text):
    p = tmp_path / "2026_01_01_00_00_00_x_ECC_ON_h.log"
    p.write_text(text)
    same(p)


@pytest.mark.needs_shared
def test_every_shared_sample_is_read():
    if not SHARED:
        pytest.skip("../shared/data is not beside this checkout")
    for folder in SHARED:
        for p in sorted((folder / "beam-logs").glob("*.log")):
            s = summarize(p)
            assert s.lines > 0 and s.unparsed < s.lines
            same(p)
        for p in sorted((folder / "facility").glob("*")):
            if p.is_file():
                log = read_flux_log(p)
                assert len(log.t) > 100 and not log.malformed


def test_summarize_dnn_detail_flag(tmp_path):
    assert summarize(dut_log(tmp_path / "a", T0 + timedelta(hours=1), sdc_at={1: False})).dnn_details
    # prefixed detail lines (a server copy) take the record path and still count
    assert summarize(dut_log(tmp_path / "b", T0, sdc_at={1: False}, iso=True)).dnn_details
    assert not summarize(dut_log(tmp_path / "c", T0, iters=5)).dnn_details


def _pid_of(x: int) -> tuple[int, int]:
    import os

    return x, os.getpid()


def test_map_logs_never_starts_more_processes_than_logs():
    """``--jobs 100000`` (fit, logs) on 20 logs: a pool of at most 20 processes, results in the logs' order (before:
    ProcessPoolExecutor(max_workers=100000) forked until the machine ran out of processes)."""
    from diehardlab.analysis.inventory import map_logs

    out = map_logs(_pid_of, list(range(20)), jobs=100000)
    assert [x for x, _ in out] == list(range(20))
    assert 1 <= len({pid for _, pid in out}) <= 20
    assert map_logs(_pid_of, [1, 2], jobs=100000) == [(1, _pid_of(0)[1]), (2, _pid_of(0)[1])]  # few: no pool
