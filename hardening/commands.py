"""Subcommands of this component (see diehardlab.cli); each module is imported only when it runs."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command("train", "hardening.train", "train a (fault-aware, hardened) model into a checkpoint folder"),
    Command("evaluate", "hardening.evaluate", "clean accuracy and regret under injected faults (K campaigns)"),
]
