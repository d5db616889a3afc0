"""The ``diehard`` command: a lazy dispatcher over the components' subcommands.

Each component lists its subcommands in ``diehardlab.<component>.commands`` as :class:`Command` entries;
those files import nothing heavy, so ``diehard --help`` and ``diehard serve`` work on a beam-room
server that has no torch, and ``diehard fit`` on a laptop that has no torch either. The module named
by a command is imported only when that command runs; it must define ``main(argv) -> int`` and build
its own ``argparse`` parser with ``prog="diehard <name>"``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Component package -> the extra that installs its dependencies (pyproject.toml). The demo composes the
# others and sits above them; the shared core (this package's own modules) registers no subcommand.
COMPONENTS: dict[str, str] = {
    "diehardlab.demo": "all",
    "diehardlab.hardening": "train",
    "diehardlab.harness": "dut",
    "diehardlab.watchdog": "server",
    "diehardlab.analysis": "analysis",
}


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str


def registry(components: Sequence[str] | None = None) -> dict[str, tuple[str, Command]]:
    """Map subcommand name -> (component, command), reading only the light ``commands`` modules."""
    table: dict[str, tuple[str, Command]] = {}
    for component in components or COMPONENTS:
        mod = importlib.import_module(f"{component}.commands")
        for cmd in mod.COMMANDS:
            if cmd.name in table:
                raise RuntimeError(f"subcommand {cmd.name!r} registered twice ({table[cmd.name][0]}, {component})")
            table[cmd.name] = (component, cmd)
    return table


def _overview(prog: str, table: dict[str, tuple[str, Command]]) -> str:
    from diehardlab import __version__

    lines = [
        f"usage: {prog} <command> [options]   ({prog} <command> --help for each)",
        "",
        f"diehardlab {__version__}: neutron-beam test harness and fault-hardened CNN trainer.",
    ]
    titles = {
        "diehardlab.demo": "whole product",
        "diehardlab.hardening": "hardening (train and assess models; needs the 'train' extra)",
        "diehardlab.harness": "harness (runs on the device under test; needs the 'dut' extra)",
        "diehardlab.watchdog": "watchdog (campaign server; needs the 'server' extra)",
        "diehardlab.analysis": "analysis (logs, cross sections, FIT, PVF; needs the 'analysis' extra)",
    }
    for component in COMPONENTS:
        cmds = [c for comp, c in table.values() if comp == component]
        if not cmds:
            continue
        lines += ["", titles[component] + ":"]
        lines += [f"  {c.name:<12} {c.help}" for c in sorted(cmds, key=lambda c: c.name)]
    return "\n".join(lines)


def _missing_dependency(exc: ModuleNotFoundError, component: str) -> str:
    extra = COMPONENTS[component]
    return (
        f"this command needs the Python package {exc.name!r}, which is not installed.\n"
        f"Install the '{extra}' extra into this environment: pip install 'diehardlab[{extra}]'"
    )


def main(argv: Sequence[str] | None = None, component: str | None = None) -> int:
    """Entry point of ``diehard`` (and of ``python -m <component>`` with ``component`` set)."""
    from diehardlab.errors import DiehardError

    args = list(sys.argv[1:] if argv is None else argv)
    prog = "diehard" if component is None else f"python -m {component}"
    table = registry([component] if component else None)

    if not args or args[0] in ("-h", "--help"):
        print(_overview(prog, table))
        return 0
    if args[0] == "--version":
        from diehardlab import __version__

        print(f"diehardlab {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(sorted(close))}?" if close else ""
        print(f"{prog}: unknown command {name!r}.{hint} See '{prog} --help'.", file=sys.stderr)
        return 2
    owner, cmd = table[name]
    try:
        mod = importlib.import_module(cmd.module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == "diehardlab" or exc.name.startswith("diehardlab.")):
            raise  # our own module is missing: a broken install, not a missing extra
        print(f"diehard {name}: {_missing_dependency(exc, owner)}", file=sys.stderr)
        return 2
    try:
        return int(mod.main(rest) or 0)
    except DiehardError as exc:
        print(f"diehard {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diehard {name}: interrupted", file=sys.stderr)
        return 130


def component_main(component: str) -> None:
    """Body of each component's ``__main__``: ``python -m diehardlab.watchdog serve ...``."""
    raise SystemExit(main(component=component))


def run_action(name: str, argv: Sequence[str], actions: dict[str, Callable[[list[str]], int]], usage: str) -> int:
    """``diehard NAME ACTION ...`` for a command made of actions (sfi, zoo): help, an unknown action, dispatch."""
    argv = list(argv)
    names = list(actions)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: diehard {name} {{{','.join(names)}}} [options]   (diehard {name} <action> --help for each)\n")
        print(usage)
        return 0
    if argv[0] not in actions:
        choices = ", ".join(names[:-1]) + f" or {names[-1]}"
        print(f"diehard {name}: unknown action {argv[0]!r}; use {choices}\n{usage}", file=sys.stderr)
        return 2
    return actions[argv[0]](argv[1:])


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser every subcommand starts from, so usage lines read ``diehard <name>``."""
    return argparse.ArgumentParser(
        prog=f"diehard {name}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
