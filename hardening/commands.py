"""Subcommands of this component (see diehardlab.cli); each module is imported only when it runs."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command("train", "hardening.train", "train a (fault-aware, hardened) model into a checkpoint folder"),
    Command("evaluate", "hardening.evaluate", "clean accuracy and regret under injected faults (K campaigns)"),
    Command("sfi", "hardening.sfi.cli", "statistical fault injection: sample sizes, runs, curves"),
    Command("select", "hardening.selection", "rank test images by difficulty (el2n, deepgini, ce)"),
]
