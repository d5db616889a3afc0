"""Fixtures of the analysis tests: synthetic facility logs with known answers, campaign files."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

T0 = datetime(2026, 3, 1, 10, 0, 0)


def chipir_rows(
    seconds: int,
    rate: float,
    off: tuple[float, float] | None = None,
    gap: tuple[float, float] | None = None,
    step: float = 3.0,
    start: datetime = T0,
    sep: str = " ",
) -> list[str]:
    """A ChipIR count log: one row every ``step`` s, fission counter at ``rate`` counts/s, stalled during
    ``off`` (beam off), rows missing during ``gap`` (the logger paused; the counter kept counting)."""
    rows = ["Data From ChipIR"]
    t = 0.0
    while t <= seconds:
        on = t if off is None else (t if t <= off[0] else off[0] + max(0.0, t - off[1]))
        counts = round(rate * on)
        if gap is None or not gap[0] < t < gap[1]:
            when = start + timedelta(seconds=t)
            fields = [when.strftime("%d/%m/%Y"), when.strftime("%H:%M:%S"), f".{when.microsecond // 1000:03d}",
                      f"{counts * 3:011d}", f"{counts * 5:011d}", f"{counts * 2:011d}", f"{counts:011d}",
                      f"{2000 + t / 3600:.2f}", "40.00"]  # fmt: skip
            rows.append(
                sep.join(fields) if sep != " " else f"{fields[0]} {fields[1]} {fields[2]}  " + " ".join(fields[3:])
            )
        t += step
    return rows


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


CAMPAIGN = """
[campaign]
name = "{name}"

[facility]
kind = "{kind}"
flux_factor = {factor}
timezone = "{fzone}"

[analysis]
group_by = {group_by}

[[dut]]
name = "{dut}"
hostname = "{host}"
transport = "local"
timezone = "{dzone}"
attenuation = {att}
[[dut.benchmark]]
name = "{bench}"
argv = ["x"]
model = "{model}"
"""


def campaign_file(tmp: Path, **kw) -> Path:
    vals = dict(name="t", kind="chipir", factor=1.0e5, fzone="UTC", dut="dut1", host="dut1", dzone="UTC",
                att=1.0, bench="cudaDarknet", model="", group_by='["board", "benchmark", "ecc"]')  # fmt: skip
    vals.update(kw)
    p = tmp / "campaign.toml"
    p.write_text(CAMPAIGN.format(**vals))
    return p


CHIPIR_2016 = """
[campaign]
name = "chipir-2016-11"
[facility]
kind = "chipir"
flux_factor = 5.0e5
timezone = "Europe/London"
{facility}
[analysis]
{analysis}
[[dut]]
name = "carol-k402"
transport = "local"
timezone = "{zone}"
[[dut.benchmark]]
name = "cudaDarknet"
argv = ["darknet"]
"""


def chipir_2016(folder: Path, zone: str = "Europe/London", facility: str = "", analysis: str = "") -> Path:
    """The campaign file of the real ChipIR Nov 2016 samples (carol-k402, cudaDarknet), with the DUT's clock
    zone and extra [facility] / [analysis] lines."""
    p = folder / "campaign.toml"
    p.write_text(CHIPIR_2016.format(zone=zone, facility=facility, analysis=analysis))
    return p
