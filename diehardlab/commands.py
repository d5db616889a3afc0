"""Subcommands that belong to no single component (registered with the dispatcher)."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command("demo", "diehardlab.demo", "a complete simulated beam campaign on this machine, in minutes"),
]
