"""The `longclip` command: a registry of subcommands.

The library's own commands are in `commands.py`; each application (the pipelines, training, the demo) registers
its own `commands.Command`s in the `longclip.commands` entry-point group of the installed distribution
(pyproject.toml), so the library never imports its applications.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from .commands import LIBRARY_COMMANDS, Command

COMMAND_GROUP = "longclip.commands"


def registered_commands() -> dict[str, Command]:
    """The library's commands, then those the installed applications register (first registration of a name wins)."""
    commands = {command.name: command for command in LIBRARY_COMMANDS}
    for entry_point in entry_points(group=COMMAND_GROUP):
        if entry_point.name not in commands:
            command = entry_point.load()
            if not isinstance(command, Command) or command.name != entry_point.name:
                raise TypeError(
                    f"{entry_point.value} ({COMMAND_GROUP} entry point) is not a Command {entry_point.name!r}"
                )
            commands[command.name] = command
    return commands


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    commands = registered_commands() if commands is None else commands
    parser = argparse.ArgumentParser(prog="longclip", description="Long-CLIP text encoders for Stable Diffusion.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands.values():
        command.add_arguments(subparsers.add_parser(command.name, help=command.help, epilog=command.epilog))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    commands = registered_commands()
    args = build_parser(commands).parse_args(argv)
    try:
        print(commands[args.command].run(args))
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError; FileNotFoundError an OSError
        print(f"longclip: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("longclip: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
