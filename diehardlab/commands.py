"""Subcommands that belong to no single component (registered with the dispatcher)."""

from diehardlab.cli import Command

COMMANDS: list[Command] = []
