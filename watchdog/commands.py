"""Subcommands of this component (see diehardlab.cli); each module is imported only when it runs."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command("serve", "diehardlab.watchdog.cli_serve", "run the campaign server: watchdogs, datagrams, journal"),
    Command("dashboard", "diehardlab.watchdog.cli_dashboard", "live read-only web page: DUTs, beam time still needed"),
    Command("status", "diehardlab.watchdog.cli_status", "show each DUT's state, heartbeat age, SDC/DUE counts"),
    Command("power", "diehardlab.watchdog.cli_power", "switch a DUT's outlet: on, off, cycle, state"),
]
