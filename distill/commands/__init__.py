"""Subcommands beside Lightning's fit, validate and test: ``distill eval``, ``distill export``
and ``distill stream-convert``.

A command is a function. The CLI builds the trainer, the model and the DataModule from the
config as for ``fit`` and passes those the function's signature names (``trainer``,
``model``, ``datamodule``, ``config``: the subcommand's parsed config as a dict); the rest
of its signature and its docstring are the command-line options (``distill eval --help``).
A standalone command (``STANDALONE``: ``stream-convert``) needs no config: its options are
its whole signature.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence

import docstring_parser
from jsonargparse import ArgumentParser

from distill.commands.evaluate import evaluate
from distill.commands.export import export
from distill.commands.stream_convert import stream_convert

#: Subcommand name -> function.
COMMANDS: dict[str, Callable] = {"eval": evaluate, "export": export}
#: Subcommands that build nothing from a config (no model, data or trainer) -> function.
STANDALONE: dict[str, Callable] = {"stream-convert": stream_convert}

#: Arguments the CLI provides from what it built: never command-line options.
PROVIDED = ("trainer", "model", "datamodule", "config")


def add_command_arguments(parser: ArgumentParser, command: Callable) -> list[str]:
    """Adds ``command``'s options to ``parser`` and returns their names.

    What jsonargparse adds for the signature, except that sequence options take
    space-separated values (``--knn_k 20 200``, where jsonargparse wants ``[20,200]``).
    """
    hints = typing.get_type_hints(command)
    sequences = [
        name
        for name, hint in hints.items()
        if typing.get_origin(hint) in (list, Sequence) and name not in PROVIDED
    ]
    added = parser.add_function_arguments(command, skip={*PROVIDED, *sequences})
    helps = {p.arg_name: p.description for p in docstring_parser.parse(command.__doc__).params}
    parameters = inspect.signature(command).parameters
    group = parser.groups.get(command.__name__, parser)  # the options' help section
    for name in sequences:
        (item,) = typing.get_args(hints[name])
        default = list(parameters[name].default)
        group.add_argument(f"--{name}", type=item, nargs="+", default=default, help=helps[name])
    return [*added, *sequences]


def run_standalone(name: str, args: list[str], parser: ArgumentParser) -> object:
    """Parses ``args`` as the options of the standalone command ``name`` and runs it."""
    command = STANDALONE[name]
    add_command_arguments(parser, command)
    config = parser.parse_args(args).as_dict()
    config.pop("config", None)
    return command(**config)


def provided_arguments(command: Callable, **available: object) -> dict[str, object]:
    """Those of ``available`` (trainer, model, ...) that ``command`` takes."""
    parameters = inspect.signature(command).parameters
    return {name: value for name, value in available.items() if name in parameters}


__all__ = [
    "COMMANDS",
    "STANDALONE",
    "add_command_arguments",
    "evaluate",
    "export",
    "provided_arguments",
    "run_standalone",
    "stream_convert",
]
