"""Subcommands of this component (see diehardlab.cli); each module is imported only when it runs."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command("logs", "diehardlab.analysis.inventory", "inventory a folder of libLogHelper logs: one row per file"),
    Command("fit", "diehardlab.analysis.fit", "cross sections and FIT per group with exact Poisson intervals"),
    Command("stats", "diehardlab.analysis.stats", "quick intervals and sample sizes: poisson, binomial, sample-size"),
    Command("pvf", "diehardlab.analysis.nvbitfi", "PVF from NVBitFI results with binomial intervals"),
    Command("report", "diehardlab.analysis.report", "HTML or Markdown report: FIT, normalised, PVF, regret, truth"),
]
