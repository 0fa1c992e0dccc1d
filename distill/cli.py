"""The ``distill`` command (also ``lightning`` and ``python -m distill``): a LightningCLI.

``distill fit --config configs/quickstart.yaml`` trains; ``validate``, ``test``,
``--print_config``, stacked ``--config`` files and dotted overrides such as
``--trainer.max_epochs 3`` or ``--model.init_args.backbone resnet8`` work as in any
LightningCLI. Every run also gets a checkpoint callback (last and best by the method's main
metric; ``--checkpoint.*``), the resolved config in TensorBoard's HParams tab and a grid of the
first batch's views in TensorBoard (``--view_grid.num_images 0`` turns it off).

Two subcommands of distill's own take the same config: ``distill eval`` (k-NN and linear
probe of a checkpoint's backbone) and ``distill export`` (the backbone as a state dict
with a JSON sidecar); see ``distill.commands``.
"""

from __future__ import annotations

import sys
import warnings

import docstring_parser
from jsonargparse import Namespace, class_from_function
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

import distill.data  # noqa: F401  (registers the DataModules for short class names)
import distill.eval  # noqa: F401  (registers the callbacks for short class names)
import distill.methods  # noqa: F401  (registers the methods for short class names)
from distill.callbacks import MethodCheckpoint, RunHParams, ViewGrid
from distill.commands import COMMANDS, add_command_arguments, provided_arguments
from distill.commands.checkpoint import (
    check_restorable,
    lightning_resolves,
    read_checkpoint,
    weights_must_fit,
)
from distill.data.base import ViewDataModule
from distill.errors import ConfigError, NonFiniteLossError, OutputError
from distill.methods.base import Method


class DistillCLI(LightningCLI):
    """LightningCLI with distill's default callbacks and its ``eval`` and ``export`` commands."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), **{name: set() for name in COMMANDS}}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        """Lightning's, plus a parser per distill command (from its function, not the trainer)."""
        trainer_class = self.trainer_class
        if not isinstance(trainer_class, type):
            trainer_class = class_from_function(trainer_class)
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        for name in self.subcommands():
            function = COMMANDS.get(name) or getattr(trainer_class, name)
            description = docstring_parser.parse(function.__doc__ or "").short_description
            subparser_kwargs = {"description": description, **kwargs.get(name, {})}
            if name in COMMANDS:
                subparser = self.init_parser(**subparser_kwargs)
                self._add_arguments(subparser)
                added = add_command_arguments(subparser, function)
                self._subcommand_method_arguments[name] = added
            else:
                subparser = self._prepare_subcommand_parser(trainer_class, name, **subparser_kwargs)
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=description)

    def _run_subcommand(self, subcommand: str) -> None:
        command = COMMANDS.get(subcommand)
        if command is None:
            with weights_must_fit(self.trainer, self.model):  # one message, not torch's keys
                return super()._run_subcommand(subcommand)
        options = self._prepare_subcommand_kwargs(subcommand)  # with model and datamodule
        config = self.config[subcommand].clone().as_dict()
        command(**provided_arguments(command, trainer=self.trainer, config=config), **options)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MethodCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ViewGrid, "view_grid")

    def _parse_ckpt_path(self) -> None:
        """Checks a ``--ckpt_path`` and compares it with the configured model instead of obeying it.

        Before anything is built or written (no log folder yet), the file must be one the
        subcommand can use: present, a file (a folder gets the ``last.ckpt`` inside
        suggested), readable to the end, and for fit, validate and test a Lightning
        checkpoint (``read_checkpoint`` and ``check_restorable`` of
        ``distill.commands.checkpoint``). Lightning's own values (``last``, ``best``, ``hpc``,
        ``registry``, URLs) are left to Lightning.

        LightningCLI replaces the configured model (class and arguments) with the
        checkpoint's, so a Supervised config resumed from a KD checkpoint silently trains KD
        and command-line model arguments are silently dropped. Here the configuration
        applies: a checkpoint of another class is refused, and arguments that differ from
        the checkpoint's are listed in a warning.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or lightning_resolves(ckpt_path):
            return super()._parse_ckpt_path()
        saved = read_checkpoint(ckpt_path)
        model = self.config[subcommand].get("model")
        hparams = dict(saved.get("hyper_parameters") or {}) if isinstance(saved, dict) else {}
        saved_class = hparams.pop("_class_path", None)
        if model is not None and saved_class and saved_class != model.class_path:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} is a checkpoint of {saved_class}, but the configured "
                f"model is {model.class_path}; resume it with that method's config"
            )
        check_restorable(saved, ckpt_path, subcommand)
        if not isinstance(saved, dict):
            return  # eval and export say what the file holds instead
        if model is None:
            return super()._parse_ckpt_path()
        configured = (model.get("init_args") or Namespace()).clone().as_dict()
        changed = [
            f"{key}: {hparams[key]!r} -> {configured[key]!r}"
            for key in sorted(hparams)
            if not key.startswith("_") and key in configured and hparams[key] != configured[key]
        ]
        if changed:
            rank_zero_warn(
                f"model arguments differ from the checkpoint's ({ckpt_path}); the configured "
                f"values apply: {'; '.join(changed)}"
            )

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]):
        if self.subcommand in COMMANDS:
            # eval and export only read a checkpoint: no logs, files or per-epoch callbacks.
            config = {**config, **COMMAND_TRAINER, "callbacks": []}
            callbacks, self.save_config_callback = [], None
        # The default callbacks step aside where the trainer forbids them.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if config.get("logger") is not False and self.subcommand == "fit":
            callbacks = [*callbacks, RunHParams(self.config[self.subcommand].clone().as_dict())]
        return super()._instantiate_trainer(config, callbacks)


#: Trainer settings under ``eval`` and ``export``, over the config's.
COMMAND_TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def _find_user_error(error: BaseException | None) -> Exception | None:
    """The ConfigError, NonFiniteLossError or OutputError behind ``error``, which may be wrapped."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError | NonFiniteLossError | OutputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _quiet_lightning_leafspec_warning() -> None:
    """Hides one FutureWarning that every run printed and that no user can act on.

    Lightning's ``CombinedLoader`` (2.6.6, the newest) builds ``torch.utils._pytree.LeafSpec()``,
    which torch 2.14 deprecates (Lightning-AI/pytorch-lightning#21326). Only that message,
    raised from that Lightning module, is ignored; every other warning still shows.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def build_cli(args: list[str] | None = None, **kwargs) -> DistillCLI:
    """Builds (and, with a subcommand in ``args``, runs) the CLI; ``kwargs`` go to LightningCLI.

    For programs that need the trainer afterwards or extra ``trainer_defaults`` (e.g. a
    benchmark's timing callback); ``main`` is the command line's entry point.
    """
    _quiet_lightning_leafspec_warning()
    return DistillCLI(
        Method,
        ViewDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        # No prefix matching: a misspelt --trainer.max_epoch must fail, not guess.
        parser_kwargs={"allow_abbrev": False},
        args=args,
        **kwargs,
    )


#: Exit codes: 2 a configuration mistake, 1 a non-finite loss, 74 a file that could not be
#: written (disk full, read-only: sysexits' EX_IOERR), 128 + signal number after a SIGTERM
#: (143: schedulers requeue) or SIGINT (130) that wrote an interrupted checkpoint.
EXIT_CONFIG, EXIT_NONFINITE, EXIT_WRITE, EXIT_SIGTERM, EXIT_SIGINT = 2, 1, 74, 143, 130

#: Exit code by the kind of error ``main`` prints.
EXIT_CODES = {ConfigError: EXIT_CONFIG, NonFiniteLossError: EXIT_NONFINITE, OutputError: EXIT_WRITE}


def main(args: list[str] | None = None) -> None:
    """Runs the CLI on ``args`` (default: ``sys.argv[1:]``); see the ``EXIT_*`` codes."""
    try:
        build_cli(args)
    except SIGTERMException as stop:  # also a first Ctrl-C (see MethodCheckpoint)
        signal_name = getattr(stop, "signal_name", "SIGTERM")
        raise SystemExit(EXIT_SIGINT if signal_name == "SIGINT" else EXIT_SIGTERM) from None
    except SystemExit as exit_:
        # A second Ctrl-C: Lightning turns it into sys.exit(1) after its shutdown.
        if isinstance(exit_.__context__, KeyboardInterrupt):
            raise SystemExit(EXIT_SIGINT) from None
        raise
    except Exception as error:
        user_error = _find_user_error(error)
        if user_error is None:
            raise
        print(f"distill: error: {user_error}", file=sys.stderr)
        code = next(code for kind, code in EXIT_CODES.items() if isinstance(user_error, kind))
        raise SystemExit(code) from None
