"""Subcommands of this component (see diehardlab.cli); each module is imported only when it runs."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command("golden", "diehardlab.harness.cli_golden", "make the golden outputs of a checkpoint on this device"),
    Command(
        "run", "diehardlab.harness.cli_run", "inference loop on the DUT: compare, log, stream (--simulate-beam, --once)"
    ),
    Command(
        "nvbitfi", "diehardlab.harness.nvbitfi", "NVBitFI workload for a model: run.sh, sdc_check.sh, golden files"
    ),
]
