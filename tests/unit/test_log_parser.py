"""The streaming parser on every real sample and every variant of FORMATS.md section 1."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diehardlab.formats.filename import parse_log_name
from diehardlab.formats.parser import (
    Begin,
    ErrDetail,
    Iteration,
    LogParser,
    Sdc,
    ServerEnd,
    Unparsed,
    parse_file,
    summarize,
)

# Counted by hand from the files (grep -c '^#SDC' etc.), not by the parser under test.
REAL = {
    "2015_11_22_06_10_10_cudaGEMM_carolk402.log": dict(
        it=1, sdc=1, err=500, aborted="too many errors per iteration", ended=True, first=0, last=0, acc=0.119787
    ),
    "2016_02_11_16_28_01_cudaGEMM_carol-tx.log": dict(
        it=566, sdc=1, err=1, aborted=None, ended=False, first=0, last=565, acc=29.642955
    ),
    "2016_11_24_01_26_02_cudaDarknet_carol-k402.log": dict(
        it=825, sdc=2, err=504, aborted="amount of errors equals of the last iteration", ended=True, first=0,
        last=824, acc=79.492019,
    ),
    "2016_11_27_01_09_38_cudaDarknet_carol-k402.log": dict(
        it=278, sdc=2, err=87, aborted=None, ended=False, first=0, last=277, acc=114.163686
    ),
    "2016_12_11_17_47_28_cudaDarknet_carol-k402.log": dict(
        it=3528, sdc=1, err=262, aborted=None, ended=False, first=2803, last=6330, acc=2263.039384
    ),
    "2016_12_12_04_25_50_openmpDGEMM_carolxeon2-mic0.log": dict(
        it=97, sdc=3, err=509, aborted="too many errors per iteration", ended=True, first=0, last=96,
        acc=1290.707443,
    ),
    "2016_12_13_06_24_22_cudaHOG_carol-k402.log": dict(
        it=10426, sdc=0, err=1, aborted=None, ended=True, first=0, last=10425, acc=232.407216
    ),
    "2017_09_10_15_18_35_cudaQuickSortCDP_ECC_OFF_carol-k201.log": dict(
        it=46, sdc=3, err=504, aborted="too many errors per iteration", ended=True, first=0, last=45,
        acc=129.939729,
    ),
    "2017_09_12_11_02_15_openclBezierSurface_ECC_OFF_carolapu-2.log": dict(
        it=8, sdc=2, err=2, aborted="amount of errors equals of the last iteration", ended=True, first=40,
        last=118, acc=659.080208,
    ),
}  # fmt: skip


def test_all_real_samples_are_known(beam_logs):
    assert sorted(p.name for p in beam_logs.glob("*.log")) == sorted(REAL)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_sample(beam_logs, name):
    path = beam_logs / name
    want = REAL[name]
    s = summarize(path)
    # A second, naive count: markers at line start, as the files were counted by hand.
    lines = path.read_text(errors="replace").splitlines()
    assert s.sdc_count == want["sdc"] == sum(ln.startswith("#SDC") for ln in lines)
    assert s.it_lines == want["it"] == sum(ln.startswith("#IT") for ln in lines)
    assert s.err_lines == want["err"] == sum(ln.startswith("#ERR") for ln in lines)
    assert s.aborted == want["aborted"]
    assert s.ended is want["ended"]
    assert (s.first_iteration, s.last_iteration) == (want["first"], want["last"])
    assert s.last_acc_time == pytest.approx(want["acc"])
    assert s.unparsed == 0


def test_darknet_sdc_records(beam_logs):
    recs = [r for r in parse_file(beam_logs / "2016_11_24_01_26_02_cudaDarknet_carol-k402.log") if isinstance(r, Sdc)]
    assert [(r.iteration, r.kernel_errors, r.acc_errors) for r in recs] == [(823, 147, 147), (824, 147, 294)]
    assert recs[1].acc_time == pytest.approx(79.492019) and recs[1].kernel_time == pytest.approx(0.095854)


def test_log_that_starts_mid_run_owns_only_its_kernel_time(beam_logs):
    s = summarize(beam_logs / "2016_12_11_17_47_28_cudaDarknet_carol-k402.log")
    assert s.header is None and s.begin is None
    assert s.start == datetime(2016, 12, 11, 17, 47, 28)  # from the file name
    # AccTime 2263.039384 at the end, 1002.399571 - 0.357943 before the first line of this file.
    assert s.kernel_time == pytest.approx(2263.039384 - (1002.399571 - 0.357943))


def test_begin_may_differ_from_the_file_name(beam_logs):
    s = summarize(beam_logs / "2017_09_12_11_02_15_openclBezierSurface_ECC_OFF_carolapu-2.log")
    assert s.begin == datetime(2017, 9, 12, 11, 22, 46)
    assert s.name_time == datetime(2017, 9, 12, 11, 2, 15)
    assert s.ecc == "OFF" and s.hostname == "carolapu-2" and s.benchmark == "openclBezierSurface"


def test_cuda_failure_text_is_an_err_detail(beam_logs):
    recs = list(parse_file(beam_logs / "2016_12_13_06_24_22_cudaHOG_carol-k402.log"))
    errs = [r for r in recs if isinstance(r, ErrDetail)]
    assert len(errs) == 1 and "unspecified launch failure" in errs[0].text


@pytest.mark.parametrize(
    "name, fields",
    [
        ("2016_11_24_01_26_02_cudaDarknet_carol-k402.log", ("cudaDarknet", None, "carol-k402")),
        ("2021_11_15_22_08_25_cuda_trip_half_lava_ECC_OFF_fernando.log", ("cuda_trip_half_lava", "OFF", "fernando")),
        ("2022_09_15_16_00_43_PyTorch-c100_res44_test_02_relu6-bn_ECC_ON_carolinria.log",
         ("PyTorch-c100_res44_test_02_relu6-bn", "ON", "carolinria")),
    ],
)  # fmt: skip
def test_file_names(name, fields):
    n = parse_log_name(name)
    assert n is not None and (n.benchmark, n.ecc, n.hostname) == fields


@pytest.mark.parametrize("name", ["notes.log", "2016_13_40_00_00_00_x_y.log", "2016_11_24_01_26_02_nohost.txt"])
def test_names_that_are_not_log_names(name):
    assert parse_log_name(name) is None


SERVER_COPY = """\
2026-03-01 10:00:00.120 #SERVER_HEADER {"benchmark": "resnet20", "dut": "board-1"}
2026-03-01 10:00:00.121 #SERVER_BEGIN Y:2026 M:3 D:1 TIME:10:0:0-121000
2026-03-01 10:00:01.000 #HEADER model:resnet20
2026-03-01 10:00:01.001 #BEGIN Y:2026 M:03 D:01 Time:10:00:01
2026-03-01 10:00:02.500 #IT 0 KerTime:0.0100000 AccTime:0.0100000
2026-03-01 10:00:03.000 #ERR batch:0 critical-img:5 i:0 g:3 o:8 gt:3
2026-03-01 10:00:03.001 #SDC Ite:1 KerTime:0.0100000 AccTime:0.0200000 KerErr:1 AccErr:1
2026-03-01 10:00:04.000 #ERR batch:0 img:5 i:2 g:1.000000e+00 o:1.100000e+00
2026-03-01 10:00:04.001 #SDC Ite:2 KerTime:0.0100000 AccTime:0.0300000 KerErr:1 AccErr:2
2026-03-01 10:00:30.000 #INF DUE cause:app-hang action:soft-app-reboot
2026-03-01 10:00:30.001 #SERVER_DUE:soft APP reboot TIME:2026-03-01-10-00-30
"""


def test_server_copy_with_iso_prefix(tmp_path):
    p = tmp_path / "2026_03_01_10_00_00_resnet20_ECC_OFF_board-1.log"
    p.write_text(SERVER_COPY)
    s = summarize(p)
    assert s.server_header.startswith('{"benchmark"')
    assert s.server_begin == datetime(2026, 3, 1, 10, 0, 0, 121000)
    assert [e.critical for e in s.sdc] == [True, False]
    assert s.sdc[0].stamp == datetime(2026, 3, 1, 10, 0, 3, 1000)
    assert (s.server_end, s.due_reason, s.due_cause) == ("due", "soft APP reboot", "app-hang")
    assert s.server_end_time == datetime(2026, 3, 1, 10, 0, 30)
    assert s.first_stamp == datetime(2026, 3, 1, 10, 0, 0, 120000)
    assert s.unparsed == 0


@pytest.mark.parametrize(
    "line, status, reason",
    [
        ("#SERVER_END TIME:2026-03-01-10-00-30", "end", None),
        ("#SERVER_DUE:power cycle TIME:2026-03-01-10-00-30", "due", "power cycle"),
        ("#SERVER_DUE:soft OS reboot TIME:2026-03-01-10-00-30", "due", "soft OS reboot"),
        ("#SERVER_UNKNOWN TIME:2026-03-01-10-00-30", "unknown", None),
    ],
)
def test_server_closing_markers(line, status, reason):
    (rec,) = LogParser().parse([line])
    assert isinstance(rec, ServerEnd) and (rec.status, rec.reason) == (status, reason)
    assert rec.when == datetime(2026, 3, 1, 10, 0, 30)


def test_old_forms():
    recs = list(
        LogParser().parse(
            [
                "#IT Ite:7 KerTime:0.119787 AccTime:0.119787",
                "#SDC 2015_11_19;  size:1024; 1",
                "#BEGIN Y:2015 M:11 D:19 Time:6:1:2",
                "#LOGFILE /var/radiation-benchmarks/log/x.log",
            ]
        )
    )
    assert isinstance(recs[0], Iteration) and recs[0].iteration == 7
    assert isinstance(recs[1], Sdc) and recs[1].kernel_errors == 1 and recs[1].iteration is None
    assert isinstance(recs[2], Begin) and recs[2].when == datetime(2015, 11, 19, 6, 1, 2)


def test_substring_markers_are_not_counted():
    recs = list(LogParser().parse(["#ERR text that says #END and #SDC Ite:1", "  #END", "junk #SDC Ite:3"]))
    assert isinstance(recs[0], ErrDetail)
    assert [type(r) for r in recs[1:]] == [Unparsed, Unparsed]


def test_truncated_last_line_and_garbage_are_reported_with_line_numbers(tmp_path):
    p = tmp_path / "2026_01_01_00_00_00_x_ECC_ON_h.log"
    p.write_bytes(b"#HEADER a\n#IT 0 KerTime:0.1 AccTime:0.1\n\xff\xfe binary\n#IT 1 KerTime:0.1 AccT")
    s = summarize(p)
    assert s.it_lines == 1 and s.unparsed == 2
    assert [ln for ln, _, _ in s.unparsed_examples] == [3, 4]
    assert not s.ended


def _synthetic_log() -> bytes:
    return (SERVER_COPY + "#IT 3 KerTime:0.01 AccTime:0.04\n#ABORT too many errors per iteration\n#END").encode()


@given(st.binary(max_size=4000))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fuzz") / "2026_01_01_00_00_00_x_ECC_ON_h.log"
    p.write_bytes(data)
    s = summarize(p)
    assert s.unparsed <= s.lines


@given(st.integers(min_value=0, max_value=len(_synthetic_log())), st.binary(max_size=40))
@settings(max_examples=300, deadline=None)
def test_truncated_or_corrupted_logs_never_raise(tmp_path_factory, cut, tail):
    p = tmp_path_factory.mktemp("cut") / "x.log"
    p.write_bytes(_synthetic_log()[:cut] + tail)
    s = summarize(p)
    # Everything before the cut line still counts.
    full_lines = _synthetic_log()[:cut].count(b"\n")
    assert s.sdc_count >= min(2, sum(1 for ln in SERVER_COPY.splitlines()[:full_lines] if "#SDC" in ln))


@given(st.lists(st.text(max_size=200), max_size=50))
@settings(max_examples=300, deadline=None)
def test_random_text_lines_never_raise(lines):
    for rec in LogParser().parse(lines):
        assert rec.lineno >= 1


def test_parse_file_accepts_paths(tmp_path):
    p = Path(tmp_path) / "a.log"
    p.write_text("#END\n")
    assert len(list(parse_file(p))) == 1
