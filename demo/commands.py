"""The demo's subcommand (registered with the dispatcher)."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command("demo", "diehardlab.demo.pipeline", "a complete simulated beam campaign on this machine, in minutes"),
]
