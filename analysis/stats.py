"""Quick checks at the beam line (``diehard stats``): Poisson and binomial intervals, FI sample sizes.

diehard stats poisson 7 --fluence 3.2e10            # events -> interval, cross section, FIT
diehard stats binomial 17 250 --method wilson       # PVF-style proportion
diehard stats sample-size 17174144 --error 0.01     # faults to inject (Leveque et al.)
diehard stats target 0.2 --events 2 --beam-on 79.5  # events and beam time until +-20 % (the dashboard's)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from diehardlab.analysis import intervals, planning

from diehardlab import sampling
from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError

# Counts beyond 2^53 are not exact in floating point, and chi-square quantiles of such degrees of freedom are not
# computed (scipy refuses them): far beyond any beam test's events.
MAX_EVENTS = 2**53


def _positive(value: float | None, option: str, unit: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{option} must be a positive number of {unit}, got {value}")


def _poisson(args: argparse.Namespace) -> int:
    if args.events < 0:
        raise ConfigError(f"EVENTS must be a count >= 0, got {args.events}")
    if args.events > MAX_EVENTS:
        raise ConfigError(f"EVENTS {args.events} is beyond what this tool computes exactly (at most 2^53)")
    _positive(args.fluence, "--fluence", "n/cm^2")
    _positive(args.sea_level_flux, "--sea-level-flux", "n/(cm^2 h)")
    lo, hi = intervals.garwood(args.events, args.confidence, args.one_sided)
    side = "one-sided upper limit" if args.one_sided else "two-sided"
    print(f"events: {args.events}  Garwood {side} {args.confidence:.4g}: [{lo:.6g}, {hi:.6g}]")
    if args.fluence:
        f = args.fluence
        per = args.sea_level_flux * 1e9
        sigma = args.events / f
        print(f"cross section: {sigma:.6e} cm^2  [{lo / f:.6e}, {hi / f:.6e}]   (fluence {f:.6g} n/cm^2)")
        print(
            f"FIT: {sigma * per:.6g}  [{lo / f * per:.6g}, {hi / f * per:.6g}]   ({args.sea_level_flux:g} n/(cm^2 h))"
        )
    if args.events > 0:
        legacy = intervals.legacy_error(args.events, float(args.events))
        print(f"legacy bar 1.96 x N / sqrt(N) (ipdps2021 tables; for comparison only): +/- {legacy:.6g} events")
    return 0


def _binomial(args: argparse.Namespace) -> int:
    if args.n > MAX_EVENTS:
        raise ConfigError(f"N {args.n} is beyond what this tool computes exactly (at most 2^53)")
    if not 0 <= args.k <= args.n:
        raise ConfigError(f"need 0 <= K <= N, got K={args.k}, N={args.n}")
    lo, hi = intervals.binomial_interval(args.k, args.n, args.confidence, args.method)
    p = args.k / args.n if args.n else float("nan")
    print(f"{args.k} / {args.n} = {p:.6g}   {args.method} {args.confidence:.4g}: [{lo:.6g}, {hi:.6g}]")
    return 0


def _target(args: argparse.Namespace) -> int:
    try:
        need = planning.events_for_width(args.width, args.confidence, args.one_sided)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    side = "one-sided upper limit" if args.one_sided else "Garwood interval"
    print(f"{side} within +-{100 * args.width:g} % at {args.confidence:.4g}: {need} events")
    if args.events is not None:
        beam_on = args.beam_on
        if beam_on is None or not (math.isfinite(beam_on) and beam_on > 0) or args.events < 0 or args.boards < 1:
            raise ConfigError("--events needs --beam-on S > 0 (beam-on seconds of those events), --boards >= 1")
        width = planning.relative_half_width(args.events, args.confidence, args.one_sided)
        secs = planning.beam_time_needed(args.events, need, args.beam_on, args.boards)
        now = f"+-{100 * width:.1f} % now" if args.events else "no events yet: no rate to extrapolate"
        more = "" if secs is None else f"; {max(0, need - args.events)} more events, {secs:.6g} s of beam"
        print(f"{args.events} events in {args.beam_on:g} s of beam-on time ({args.boards} board(s)): {now}{more}")
    return 0


def _sample_size(args: argparse.Namespace) -> int:
    for opt, v in (("--weights", args.weights), ("--bits", args.bits), ("--values", args.values),
                   ("--subpopulations", args.subpopulations)):  # fmt: skip
        if v is not None and v <= 0:
            raise ConfigError(f"{opt} must be a whole number >= 1, got {v}")
    if args.population is not None and args.population < 0:
        raise ConfigError(f"POPULATION must be >= 0, got {args.population}")
    if args.t is not None and not (math.isfinite(args.t) and args.t > 0):
        raise ConfigError(f"--t must be a positive number (2.58 for 99 %), got {args.t}")
    if not (math.isfinite(args.error) and 0 < args.error < 1):
        raise ConfigError(f"--error must be in (0, 1), got {args.error}")
    if not (math.isfinite(args.p) and 0 <= args.p <= 1):
        raise ConfigError(f"--p must be in [0, 1], got {args.p}")
    population = args.population
    if population is None:
        if args.weights is None:
            raise ConfigError("give the population N, or --weights W (N = W x bits x stuck-at values)")
        population = args.weights * args.bits * args.values
    t = args.t if args.t is not None else sampling.t_value(args.confidence, exact=args.exact_t)
    try:
        n = sampling.sample_size(population, args.error, t, args.p)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    total = n * args.subpopulations
    print(f"population N = {population:,}  error e = {args.error:g}  t = {t:g} ({args.confidence:g})  p = {args.p:g}")
    if args.subpopulations > 1:
        print(f"sample size n = {n:,} per sub-population x {args.subpopulations} = {total:,}")
    else:
        print(f"sample size n = {n:,}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("stats", __doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    po = sub.add_parser("poisson", help="Garwood interval for N events (and sigma, FIT with --fluence)")
    po.add_argument("events", type=int)
    po.add_argument("--confidence", type=float, default=0.95)
    po.add_argument("--one-sided", action="store_true", help="upper limit only")
    po.add_argument("--fluence", type=float, help="n/cm^2: also print the cross section and FIT")
    po.add_argument("--sea-level-flux", type=float, default=13.0, help="n/(cm^2 h) (JESD89A: 13)")
    po.set_defaults(fn=_poisson)
    bi = sub.add_parser("binomial", help="interval for K successes in N trials")
    bi.add_argument("k", type=int)
    bi.add_argument("n", type=int)
    bi.add_argument("--method", choices=("clopper-pearson", "wilson"), default="clopper-pearson")
    bi.add_argument("--confidence", type=float, default=0.95)
    bi.set_defaults(fn=_binomial)
    ss = sub.add_parser("sample-size", help="statistical fault injection sample size (Leveque et al., DATE 2009)")
    ss.add_argument("population", type=int, nargs="?", help="N, the number of possible faults")
    ss.add_argument("--weights", type=int, help="instead of N: number of weights (N = W x bits x values)")
    ss.add_argument("--bits", type=int, default=32)
    ss.add_argument("--values", type=int, default=2, help="stuck-at values per bit (default 2)")
    ss.add_argument("--error", type=float, default=0.01, help="error margin e (default 0.01)")
    ss.add_argument("--confidence", type=float, default=0.99, help="confidence (default 0.99: t = 2.58)")
    ss.add_argument("--t", type=float, help="the t value itself (overrides --confidence)")
    ss.add_argument("--exact-t", action="store_true", help="unrounded t (published tables round to 2 decimals)")
    ss.add_argument("--p", type=float, default=0.5, help="estimated proportion (0.5 when unknown)")
    ss.add_argument("--subpopulations", type=int, default=1, help="sum over K equal sub-populations (per bit: 32)")
    ss.set_defaults(fn=_sample_size)
    ta = sub.add_parser("target", help="events (and beam time) until the interval lies within +-WIDTH")
    ta.add_argument("width", type=float, help="relative half-width, e.g. 0.2 for +-20 %%")
    ta.add_argument("--confidence", type=float, default=0.95)
    ta.add_argument("--one-sided", action="store_true", help="upper limit only")
    ta.add_argument("--events", type=int, help="events so far (with --beam-on: the beam time still needed)")
    ta.add_argument("--beam-on", type=float, help="beam-on seconds in which those events came (fit.csv beam_on_s)")
    ta.add_argument("--boards", type=int, default=1, help="boards of the configuration running side by side")
    ta.set_defaults(fn=_target)
    args = p.parse_args(argv)
    if getattr(args, "confidence", 0.5) is not None and not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {args.confidence}")
    return int(args.fn(args))
