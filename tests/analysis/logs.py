"""Synthetic DUT and server logs in the libLogHelper grammar (built from diehardlab.formats.grammar)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from diehardlab.formats import grammar as g
from diehardlab.formats.filename import format_log_name


def dut_log(
    folder: Path,
    start: datetime,
    host: str = "dut1",
    bench: str = "cudaDarknet",
    iters: int = 100,
    ker: float = 1.0,
    sdc_at: dict[int, bool] | None = None,
    end: str = "end",
    utc_clock: bool = True,
    server: tuple[str, datetime] | None = None,
    due_cause: str | None = None,
    iso: bool = False,
) -> Path:
    """A run of ``iters`` iterations of ``ker`` s; ``sdc_at`` maps iteration -> critical; ``end`` is "end",
    "abort" or "none" (the process died); ``server`` = (closing marker, time) makes it a server copy."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / format_log_name(start, bench, False, host)
    lines = []
    if server is not None:
        lines.append('#SERVER_HEADER {"dut": "' + host + '"}\n')
        lines.append(g.server_begin_line(start))
    lines += [f"#HEADER {bench} batch:4\n", g.begin_line(start)]
    if utc_clock:
        lines.append("#INF diehardlab version:0.1.0 clock:UTC\n")
    acc = 0.0
    n_sdc = 0
    for i in range(iters):
        acc += ker
        if sdc_at and i in sdc_at:
            n_sdc += 1
            if sdc_at[i]:
                lines.append("#ERR " + g.critical_detail(0, 1, 0, 3, 5, 3) + "\n")
            lines.append("#ERR " + g.element_detail(0, 1, 2, 0.5, 0.75) + "\n")
            lines.append(g.sdc_line(i, ker, acc, 2, 2 * n_sdc))
        else:
            lines.append(g.it_line(i, ker, acc))
    if end == "end":
        lines.append("#END\n")
    elif end == "abort":
        lines += ["#ABORT " + g.ABORT_EQUAL + "\n", "#END\n"]
    if server is not None:
        marker, when = server
        if due_cause:
            lines.append(f"#INF DUE cause:{due_cause} action:app-restart\n")
        lines.append(f"{marker} {g.server_time(when)}\n")
    if iso:
        lines = [g.iso_prefix(start + timedelta(seconds=k)) + ln for k, ln in enumerate(lines)]
    path.write_text("".join(lines))
    return path
