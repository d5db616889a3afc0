"""A log parser written the way the reference cross-section scripts are: one regex per marker, tried in
turn on every line with ``re.match(".*MARKER...")``. Kept only as the baseline of the parsing benchmark."""

from __future__ import annotations

import re


def reference_summary(path: str) -> dict[str, object]:
    sdc = 0
    critical = 0
    it_lines = 0
    acc_time = 0.0
    last_ite = 0
    aborted = False
    ended = False
    header = None
    begin = None
    crit_pending = False
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r".*HEADER(.*)", line)
            if m:
                header = m.group(1)
                continue
            m = re.match(r".*BEGIN.*Y:(\d+).*M:(\d+).*D:(\d+).*Time:(\d+):(\d+):(\d+)", line)
            if m:
                begin = m.groups()
                continue
            m = re.match(r".*SDC.*Ite:(\d+).*KerTime:(\S+).*AccTime:(\S+).*KerErr:(\d+).*AccErr:(\d+)", line)
            if m:
                sdc += 1
                critical += crit_pending
                crit_pending = False
                last_ite = int(m.group(1))
                acc_time = float(m.group(3))
                continue
            m = re.match(r".*ERR.*", line)
            if m:
                if re.match(r".*critical-img.*", line):
                    crit_pending = True
                continue
            m = re.match(r".*IT.*Ite:(\d+).*KerTime:(\S+).*AccTime:(\S+)", line) or re.match(
                r".*IT (\d+).*KerTime:(\S+).*AccTime:(\S+)", line
            )
            if m:
                it_lines += 1
                last_ite = int(m.group(1))
                acc_time = float(m.group(3))
                continue
            if re.match(r".*ABORT.*", line):
                aborted = True
                continue
            if re.match(r".*END.*", line):
                ended = True
    return {"sdc": sdc, "critical": critical, "it_lines": it_lines, "acc_time": acc_time, "last_ite": last_ite,
            "aborted": aborted, "ended": ended, "header": header, "begin": begin}  # fmt: skip
