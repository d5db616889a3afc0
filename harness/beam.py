"""The beam simulator: a labelled simulation of a neutron beam for the runner.

A SPEC (``setups/beam/*.toml``) gives a flux at the board, a cross section per event class and the
fault model of output corruption. While the (simulated) beam is on, events arrive as a Poisson process
in kernel time with rate ``flux x sigma`` per class:

- ``corrupt``: the iteration's output is corrupted through ``diehardlab.hardening.faults.corrupt`` (single, line,
  block... with a magnitude distribution); the runner's comparison must catch it;
- ``strike``: the particle strikes INSIDE the network (``diehardlab.harness.strike``): a value, a line or a block of
  one conv layer's output map, or one bit of one weight, corrupted for that iteration only. Whether the output
  then differs from the golden (an SDC) and whether top-1 changes (a critical SDC) depends on the model: a
  hardened one masks more. The true SDC and critical-SDC cross sections are the strike cross section times
  the probabilities the simulator measures on the DUT's own model and golden inputs before the run;
- ``nan``: the same with NaN values;
- ``crash``: the process really dies (SIGKILL to itself: no ``#END``);
- ``hang``: the process stops iterating, stops sending datagrams and ignores SIGTERM.

Beam-off periods are facility-wide: they repeat every ``off_every_s`` seconds of UTC wall time, so every
DUT and every restart of a runner sees the same beam. The simulator writes beside the DUT log a truth
file (``<log>.truth.json``: what it injected, when, and what the runner observed) and a facility log in the
ChipIR count-log format (``<log>.chipir.txt``) whose counters are a function of UTC time alone, so the
files of several runs agree wherever they overlap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from diehardlab.config import Strict, load
from diehardlab.formats.writer import restore_unlinked

# The order is the Poisson schedule's draw order: a new class goes where it keeps the old specs' sequences.
KINDS = ("corrupt", "strike", "nan", "crash", "hang")
# Counters of the simulated facility log are measured from this instant (UTC), so they depend on time only.
ANCHOR = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()


class BeamTable(Strict):
    name: str = "simulated"
    flux_n_cm2_s: float = Field(gt=0)  # at the board while the beam is on
    # Facility factor: n/cm^2 per fission-counter count, so flux = delta(counts) x flux_factor / delta(t).
    # The campaign file's [facility] flux_factor must be this value (attenuation 1: the board at the reference).
    flux_factor: float = Field(gt=0)
    row_interval_s: float = Field(3.0, ge=0.2, le=60)  # ChipIR writes a row every ~3 s
    off_every_s: float | None = Field(None, gt=0)  # beam-off periods repeat this often (UTC wall time)...
    off_duration_s: float = Field(0.0, ge=0)  # ...and last this long
    off_phase_s: float = Field(0.0, ge=0)  # offset of the first off period in each cycle
    proton_current_uA: float = Field(40.0, gt=0)

    @model_validator(mode="after")
    def _gaps(self) -> BeamTable:
        if self.off_every_s is not None and self.off_duration_s >= self.off_every_s:
            raise ValueError("off_duration_s must be shorter than off_every_s (the beam must come back)")
        return self


class CrossSections(Strict):
    """Per-class cross sections in cm^2: events per (n/cm^2) of fluence during kernel time."""

    corrupt: float = Field(0.0, ge=0)
    strike: float = Field(0.0, ge=0)  # inside the network: see [strike]
    nan: float = Field(0.0, ge=0)
    crash: float = Field(0.0, ge=0)
    hang: float = Field(0.0, ge=0)


class CorruptModel(Strict):
    """How a ``corrupt`` event changes the output (``diehardlab.hardening.faults.FaultSpec`` fields)."""

    kind: Literal["single", "line", "block", "channel", "mix"] = "single"
    magnitude: tuple[float, float] = (8.0, 64.0)
    p: float = Field(0.75, ge=0, le=1)


class StrikeModel(Strict):
    """Where a ``strike`` lands inside the network and what it does there (``diehardlab.harness.strike``).

    The first five fields are relative frequencies of the targets: one value (``single``), a row or column
    (``line``), a block or a whole channel of one conv layer's output map for one image, or one bit of one conv
    or linear weight (``weight_bit``) for every image of the iteration. A feature-map fault uses the fault
    models of ``diehardlab.hardening.faults`` (``value``, ``magnitude``, ``block_*``).
    """

    single: float = Field(1.0, ge=0)
    line: float = Field(0.0, ge=0)
    block: float = Field(1.0, ge=0)
    channel: float = Field(0.0, ge=0)
    weight_bit: float = Field(1.0, ge=0)
    value: Literal["magnitude", "nan", "inf"] = "magnitude"
    magnitude: tuple[float, float] = (1.0, 1000.0)
    block_channel_p: float = Field(0.5, ge=0, le=1)
    block_max_frac: float = Field(0.5, gt=0, le=1)
    # Which conv layer a feature-map strike hits: in proportion to its output size (a particle hits memory
    # uniformly), or uniform over the layers.
    layers: Literal["size", "uniform"] = "size"
    bits: tuple[int, int] = (0, 31)  # weight bits drawn uniformly in [low, high] (0: least significant)
    # Strikes per target drawn on the golden inputs before the run, to measure the true probabilities.
    calibration_strikes: int = Field(512, ge=16, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> StrikeModel:
        if self.single + self.line + self.block + self.channel + self.weight_bit <= 0:
            raise ValueError("give at least one target a positive weight (single, line, block, channel, weight_bit)")
        lo, hi = self.magnitude
        if not 0 <= lo <= hi:
            raise ValueError("magnitude: need 0 <= low <= high")
        if not 0 <= self.bits[0] <= self.bits[1] <= 31:
            raise ValueError("bits: need 0 <= low <= high <= 31")
        return self


class NanModel(Strict):
    kind: Literal["single", "line", "block", "channel", "mix"] = "single"
    value: Literal["nan", "inf"] = "nan"


class BeamSpec(Strict):
    beam: BeamTable
    cross_section_cm2: CrossSections
    corrupt: CorruptModel = CorruptModel()
    strike: StrikeModel = StrikeModel()
    nan: NanModel = NanModel()
    # Base seed; each run draws from sha256(seed, run index[, hostname, benchmark]), recorded in the truth file.
    # None: a fresh random seed per run. The run index counts the earlier truth files of the same DUT and
    # benchmark in the log folder, so restarts after a crash see new events, reproducibly.
    seed: int | None = None
    # Mix the DUT's hostname and benchmark into the seed (independent DUTs). False: every DUT sees the same
    # event sequence in kernel time (a demo that must show the same things everywhere).
    seed_per_dut: bool = True
    description: str = ""

    @model_validator(mode="after")
    def _some_rate(self) -> BeamSpec:
        cs = self.cross_section_cm2
        if cs.corrupt + cs.strike + cs.nan + cs.crash + cs.hang <= 0:
            raise ValueError("cross_section_cm2: give at least one non-zero cross section")
        lo, hi = self.corrupt.magnitude
        if not 0 < lo <= hi:
            raise ValueError("corrupt -> magnitude: need 0 < low <= high")
        if not math.isfinite(sum(self.rates().values())):
            raise ValueError(
                "cross_section_cm2 x beam -> flux_n_cm2_s: the event rate (flux x cross section) is not a finite "
                "number; lower the cross sections or the flux"
            )
        return self

    def rates(self) -> dict[str, float]:
        """Events per second of beam-on kernel time, by class."""
        cs = self.cross_section_cm2
        return {k: self.beam.flux_n_cm2_s * getattr(cs, k) for k in KINDS}

    def true_sigma(self) -> dict[str, float]:
        cs = self.cross_section_cm2
        out = {
            # Every corrupt and nan event changes the output (the runner records any that did not as
            # "masked" in the truth file; see the runner's check), so both count as SDC. A strike's share
            # depends on the network: the simulator adds it (and the critical split) once it has measured it.
            "sdc": cs.corrupt + cs.nan,
            "due": cs.crash + cs.hang,
            "crash": cs.crash,
            "hang": cs.hang,
            "nan": cs.nan,
            "corrupt": cs.corrupt,
        }
        if cs.strike > 0:
            out["strike"] = cs.strike
            del out["sdc"]
        return out


def load_spec(path: str | Path) -> BeamSpec:
    return load(BeamSpec, path)


def run_seed(spec: BeamSpec, run_index: int, hostname: str, benchmark: str) -> int:
    """The seed of one run: reproducible from the spec and the run's place in the sequence of restarts."""
    if spec.seed is None:
        return int.from_bytes(os.urandom(8), "big") >> 1
    key = f"{spec.seed}:{run_index}:{hostname}:{benchmark}" if spec.seed_per_dut else f"{spec.seed}:{run_index}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# -- beam on/off in wall time --------------------------------------------------------------------------------


def beam_on(beam: BeamTable, t: float) -> bool:
    """Is the beam on at UTC epoch second ``t``?"""
    if beam.off_every_s is None or beam.off_duration_s <= 0:
        return True
    return (t - ANCHOR - beam.off_phase_s) % beam.off_every_s >= beam.off_duration_s


def _off_before(beam: BeamTable, t: float) -> float:
    """Beam-off seconds in the cycles from the phase origin up to ``t`` (a monotone function of t)."""
    assert beam.off_every_s is not None
    u = t - ANCHOR - beam.off_phase_s
    cycles = math.floor(u / beam.off_every_s)
    return cycles * beam.off_duration_s + min(u - cycles * beam.off_every_s, beam.off_duration_s)


def beam_on_seconds(beam: BeamTable, t: float) -> float:
    """Seconds of beam-on wall time from the anchor to ``t``."""
    if beam.off_every_s is None or beam.off_duration_s <= 0:
        return t - ANCHOR
    return (t - ANCHOR) - (_off_before(beam, t) - _off_before(beam, ANCHOR))


# -- the Poisson schedule -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kernel_time_s: float  # beam-on kernel time at which it happens
    kind: str


class PoissonSchedule:
    """Merged Poisson process of all classes, on the axis of beam-on kernel time."""

    def __init__(self, rates: dict[str, float], seed: int):
        self._rng = random.Random(seed)
        self._kinds = [k for k in KINDS if rates.get(k, 0) > 0]
        self._weights = [rates[k] for k in self._kinds]
        self._total = sum(self._weights)
        self._t = 0.0
        self.saturated = 0
        self.skipped_expected = 0.0
        self.upcoming: Event | None = self._draw()

    def _draw(self) -> Event | None:
        if self._total <= 0:
            return None
        self._t += self._rng.expovariate(self._total)
        kind = self._rng.choices(self._kinds, weights=self._weights)[0]
        return Event(self._t, kind)

    def pop_until(self, kernel_time_s: float, limit: int | None = None) -> list[Event]:
        """Events with time < ``kernel_time_s``, in order; at most ``limit`` of them.

        Beyond ``limit`` the rest of the interval is skipped, not drawn: a huge rate would otherwise draw without
        end (and a float time that no longer grows by a tiny step never reaches the end at all). The process is
        memoryless, so it simply starts again at ``kernel_time_s``. ``saturated`` counts the intervals cut short
        and ``skipped_expected`` the events they are expected to have held beyond the limit.
        """
        out: list[Event] = []
        while self.upcoming is not None and self.upcoming.kernel_time_s < kernel_time_s:
            if limit is not None and len(out) >= limit:
                self.saturated += 1
                self.skipped_expected += 1 + self._total * (kernel_time_s - self.upcoming.kernel_time_s)
                self._t = kernel_time_s
                self.upcoming = self._draw()
                break
            out.append(self.upcoming)
            self.upcoming = self._draw()
        return out


# -- output files -------------------------------------------------------------------------------------------


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TruthFile:
    """``<log>.truth.json``, rewritten atomically after every event, so a crash or a hang leaves it complete."""

    def __init__(self, log_path: Path, spec: BeamSpec, spec_path: str, seed: int, run_index: int):
        self.path = log_path.with_name(log_path.name + ".truth.json")
        self.doc: dict[str, Any] = {
            "simulated": True,
            "log_file": log_path.name,
            "spec_file": spec_path,
            "spec": spec.model_dump(mode="json"),
            "flux_n_cm2_s": spec.beam.flux_n_cm2_s,
            "flux_factor": spec.beam.flux_factor,
            "seed": seed,
            "run_index": run_index,
            "true_sigma_cm2": spec.true_sigma(),
            "beam_on_kernel_time_s": 0.0,
            "kernel_time_s": 0.0,
            "ended": None,
            "events": [],
        }
        self.save()

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.doc["events"]

    def save(self, beam_on_kernel_time_s: float | None = None, kernel_time_s: float | None = None) -> None:
        if beam_on_kernel_time_s is not None:
            self.doc["beam_on_kernel_time_s"] = round(beam_on_kernel_time_s, 9)
        if kernel_time_s is not None:
            self.doc["kernel_time_s"] = round(kernel_time_s, 9)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # the log folder removed during the run
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.doc, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: no half truth file beside the complete one
            raise


class ChipirLog:
    """A facility log in the ChipIR count-log format from ``start`` to :meth:`close` (UTC clock).

    The simulator writes one per run (``<log>.chipir.txt``); ``diehardlab.demo.pipeline`` writes one for a whole
    campaign (``ChipirLog(stem, beam, start).close(end)``), as a facility keeps it.

    Rows fall on a fixed grid of UTC time (every ``row_interval_s``, at .411 s past), and every counter is
    a function of time alone: the fission counter grows by ``flux / flux_factor`` counts per second of
    beam-on time and stalls while the beam is off, the diamond counters follow it in fixed ratios, the
    proton current reads 0 while the beam is off.
    """

    FRACTION = 0.411
    BASE = 1_000_000
    DIAMOND = (1.19, 3.52, 2.02)  # 40/20/30 mV counters per fission count, as in the 2016 ChipIR sample

    def __init__(self, log_path: Path, beam: BeamTable, start: float):
        self.path = log_path.with_name(log_path.name + ".chipir.txt")
        self.beam = beam
        self._rate = beam.flux_n_cm2_s / beam.flux_factor
        step = beam.row_interval_s
        # The first row at or before the start, so the log covers the whole run.
        self._next = math.floor((start - self.FRACTION) / step) * step + self.FRACTION
        # Readable too: if the folder is removed, the rows so far are copied back from this descriptor.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size == 0:
            os.write(self._fd, b"Data From ChipIR\n")
        self.advance(start)

    def row(self, t: float) -> str:
        on_s = beam_on_seconds(self.beam, t)
        fission = self.BASE + math.floor(on_s * self._rate)
        d40, d20, d30 = (self.BASE + math.floor(on_s * self._rate * r) for r in self.DIAMOND)
        current = self.beam.proton_current_uA if beam_on(self.beam, t) else 0.0
        integrated = 2000.0 + on_s * self.beam.proton_current_uA / 3600.0
        when = datetime.fromtimestamp(t, timezone.utc)
        ms = round(when.microsecond / 1000) % 1000
        return (
            f"{when:%d/%m/%Y %H:%M:%S} .{ms:03d}  {d40:011d} {d20:011d} {d30:011d} {fission:011d} "
            f"{integrated:.2f} {current:.2f}\n"
        )

    def advance(self, now: float) -> int:
        """Write every row due up to ``now``; return how many."""
        if self._fd < 0:
            return 0
        rows = []
        while self._next <= now:
            rows.append(self.row(self._next))
            self._next += self.beam.row_interval_s
        if rows:
            if os.fstat(self._fd).st_nlink == 0:  # the log folder was removed: the rows so far, at the same path
                fd, self._fd = self._fd, restore_unlinked(self._fd, self.path)
                os.close(fd)
            os.write(self._fd, "".join(rows).encode("ascii"))
        return len(rows)

    def close(self, now: float) -> None:
        """Rows up to ``now`` and one more after it, so the run's last seconds are covered; then fsync."""
        if self._fd < 0:
            return
        self.advance(now)
        os.write(self._fd, self.row(self._next).encode("ascii"))
        self._next += self.beam.row_interval_s
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def sync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
