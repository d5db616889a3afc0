"""Subcommands of this component (see diehardlab.cli); each module is imported only when it runs."""

from diehardlab.cli import Command

COMMANDS: list[Command] = [
    Command(
        "train", "diehardlab.hardening.cli_train", "train a (fault-aware, hardened) model into a checkpoint folder"
    ),
    Command(
        "evaluate", "diehardlab.hardening.cli_evaluate", "clean accuracy and regret under injected faults (K campaigns)"
    ),
    Command("harden", "diehardlab.hardening.harden", "rewrite a trained model with the DieHardNet changes (torch.fx)"),
    Command("sfi", "diehardlab.hardening.sfi.cli", "statistical fault injection: sample sizes, runs, curves"),
    Command("zoo", "diehardlab.hardening.zoo.cli", "the benchmark suite's models: list them, import released weights"),
    Command("select", "diehardlab.hardening.selection", "rank test images by difficulty (el2n, deepgini, ce)"),
]
