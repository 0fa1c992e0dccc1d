"""The ``distill`` command (also ``lightning`` and ``python -m distill``): a LightningCLI.

``distill fit --config configs/quickstart.yaml`` trains; ``validate``, ``test``,
``--print_config``, stacked ``--config`` files and dotted overrides such as
``--trainer.max_epochs 3`` or ``--model.init_args.backbone resnet8`` work as in any
LightningCLI. Every run also gets a checkpoint callback (last and best by the method's main
metric; ``--checkpoint.*``), a learning-rate monitor (``--lr_monitor.*``) and a grid of the
first batch's views in TensorBoard (``--view_grid.num_images 0`` turns it off).
"""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import distill.data  # noqa: F401  (registers the DataModules for short class names)
import distill.eval  # noqa: F401  (registers the callbacks for short class names)
import distill.methods  # noqa: F401  (registers the methods for short class names)
from distill.callbacks import MethodCheckpoint, ViewGrid
from distill.data.base import ViewDataModule
from distill.errors import ConfigError
from distill.methods.base import Method


class DistillCLI(LightningCLI):
    """LightningCLI with distill's default callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MethodCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(ViewGrid, "view_grid")

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]):
        # The default callbacks step aside where the trainer forbids them.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if config.get("logger") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        return super()._instantiate_trainer(config, callbacks)


def _find_config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``error``: jsonargparse wraps errors raised while instantiating."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def build_cli(args: list[str] | None = None, **kwargs) -> DistillCLI:
    """Builds (and, with a subcommand in ``args``, runs) the CLI; ``kwargs`` go to LightningCLI.

    For programs that need the trainer afterwards or extra ``trainer_defaults`` (e.g. a
    benchmark's timing callback); ``main`` is the command line's entry point.
    """
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


def main(args: list[str] | None = None) -> None:
    """Runs the CLI on ``args`` (default: ``sys.argv[1:]``); user errors exit with code 2."""
    try:
        build_cli(args)
    except Exception as error:
        config_error = _find_config_error(error)
        if config_error is None:
            raise
        print(f"distill: error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from None
