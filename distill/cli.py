"""The ``distill`` command (also ``lightning`` and ``python -m distill``): a LightningCLI.

``distill fit --config configs/quickstart.yaml`` trains; ``validate``, ``test``,
``--print_config``, stacked ``--config`` files and dotted overrides such as
``--trainer.max_epochs 3`` or ``--model.init_args.backbone resnet8`` work as in any
LightningCLI. Every run also gets a checkpoint callback (last and best by the method's main
metric; ``--checkpoint.*``), the resolved config in TensorBoard's HParams tab and a grid of the
first batch's views in TensorBoard (``--view_grid.num_images 0`` turns it off).

Two subcommands of distill's own take the same config: ``distill eval`` (k-NN and linear
probe of a checkpoint's backbone) and ``distill export`` (the backbone as a state dict
with a JSON sidecar); ``distill stream-convert`` takes none (an ImageFolder split as
streaming shards); see ``distill.commands``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import NoReturn

import docstring_parser
import yaml
from jsonargparse import ArgumentParser, Namespace, class_from_function
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

import distill.data  # noqa: F401  (registers the DataModules for short class names)
import distill.eval  # noqa: F401  (registers the callbacks for short class names)
import distill.methods  # noqa: F401  (registers the methods for short class names)
from distill.callbacks import CountedModelSummary, MethodCheckpoint, RunHParams, ViewGrid
from distill.checkpoint_io import output_error
from distill.commands import (
    COMMANDS,
    STANDALONE,
    add_command_arguments,
    provided_arguments,
    run_standalone,
)
from distill.commands.checkpoint import (
    check_restorable,
    lightning_resolves,
    read_checkpoint,
    weights_must_fit,
)
from distill.data.base import ViewDataModule
from distill.errors import ConfigError, NonFiniteLossError, OutputError
from distill.methods.base import Method
from distill.resume import check_resumed_optimizer
from distill.runs import (
    KeptConfig,
    TrainingStarted,
    fixed_log_folder,
    logs_folder,
    newest_last_checkpoint,
    removed_unless_started,
    reuse_problem,
)
from distill.slurm import job_folder, requeue
from distill.teachers import TeacherSpec


class DistillArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose error comes first and names the nearest valid key.

    jsonargparse prints the usage (about 65 lines) before the error, and for a misspelt key
    in a config file no suggestion. Here the first line is ``distill: error: ...`` (as
    ``main`` prints every configuration mistake) with the unknown key, where it is and the
    nearest valid one; jsonargparse's own account follows when it has more to say, and the
    options are left to ``--help``.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parser used internally: the caller handles it
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        unknown_class = unknown_class_summary(message)
        summary = unknown_key_summary(message, parser)
        if unknown_class is not None:  # the rest of jsonargparse's account adds nothing to it
            print(f"distill: error: {unknown_class}", file=sys.stderr)
        elif summary is None:
            print(f"distill: error: {message}", file=sys.stderr)
        else:
            print(f"distill: error: {summary}", file=sys.stderr)
            if "\n" in message:
                print(f"  {message}".replace("\n", "\n  "), file=sys.stderr)
        print(f"(every option: {parser.prog.replace(' [options]', '')} --help)", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def unknown_key_summary(message: str, parser: LightningArgumentParser) -> str | None:
    """One line for an unknown-key error of jsonargparse: the key, where, and the nearest
    valid key (or the valid ones); ``None`` for any other error."""
    flat = re.search(
        r"does not accept option '([^']+)'|unrecognized arguments: -*([^\s=]+)", message
    )
    if flat:
        key = flat.group(1) or flat.group(2)
        options = {action.dest for action in parser._actions if action.dest != "help"}
        return f"unknown option {key!r}; {_nearest(key, options)}"
    typed = re.search(r"Unexpected keys: \{'([^']+)'", message)
    if typed:  # a mapping checked against a TypedDict, e.g. model.init_args.teacher
        return _typed_dict_summary(typed.group(1), message[: typed.start()])
    nested = re.search(r"Option '([^']+)' is not accepted", message)
    if not nested:
        return None
    key, before, after = nested.group(1), message[: nested.start()], message[nested.end() :]
    # The class that refused it: named on the same line after it (a callable's "Got value:
    # Namespace(..., class_path='torch.optim.SGD')"), else the nearest class_path before it.
    same_line = re.match(r"[^\n]*class_path='([^']+)'", after)
    classes = re.findall(r"class_path '([^']+)'", before)
    class_path = same_line.group(1) if same_line else (classes[-1] if classes else None)
    if class_path is None:
        return None
    where = ".init_args.".join(re.findall(r'Parser key "([^"]+)"', before))
    where = f"{where}.init_args" if where else "init_args"
    return f"unknown key {key!r} in {where} ({class_path}); {_nearest(key, _arguments(class_path))}"


def _typed_dict_summary(key: str, before: str) -> str | None:
    """``unknown key 'weigths' in model.init_args.teacher; did you mean 'weights'?``: the
    mapping is the last parser key named before the error, its keys the TypedDict's."""
    where = re.findall(r'Parser key "([^"]+)"', before)
    types = re.findall(r"Subtypes: \[<class '([^']+)'>", before)
    if not where or not types:
        return None
    module, _, name = types[-1].rpartition(".")
    try:
        valid = set(getattr(importlib.import_module(module), name).__annotations__)
    except Exception:  # not a class we can read: no suggestion rather than a crash
        return None
    return f"unknown key {key!r} in {'.init_args.'.join(where)}; {_nearest(key, valid)}"


def unknown_class_summary(message: str) -> str | None:
    """One line for a class path jsonargparse cannot import (``distill.methods.Supervized``,
    ``torch.optim.SDG``): the key, the class and the nearest name its module has; ``None`` for
    any other error."""
    found = re.search(r"module '([^']+)' has no attribute '([^']+)'", message)
    if not found:
        return None
    module_name, missing = found.groups()
    # The path as given: ``distill.method.Supervised`` has a module missing, not the class.
    given = re.search(rf"(?<![\w.]){re.escape(module_name)}\.{re.escape(missing)}[\w.]*", message)
    class_path = given.group(0) if given else f"{module_name}.{missing}"
    where = ".init_args.".join(re.findall(r'Parser key "([^"]+)"', message[: found.start()]))
    try:
        module = importlib.import_module(module_name)
    except Exception:  # jsonargparse imported it a moment ago; no suggestion rather than a crash
        return None
    names = sorted(name for name in dir(module) if not name.startswith("_"))
    close = difflib.get_close_matches(missing, names, n=1)
    rest = class_path[len(f"{module_name}.{missing}") :]
    hint = (
        f"did you mean {f'{module_name}.{close[0]}{rest}'!r}?"
        if close
        else f"{module_name} has: {', '.join(names)}"
    )
    return (
        f"unknown class {class_path!r} in {where or 'the config'}: module {module_name!r} has "
        f"no {missing!r}; {hint}"
    )


def _arguments(class_path: str) -> set[str]:
    """The constructor arguments jsonargparse accepts for ``class_path`` (empty if unknown)."""
    module, _, name = class_path.rpartition(".")
    try:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(
            getattr(importlib.import_module(module), name), fail_untyped=False
        )
    except Exception:  # an unimportable or unusual class: no suggestion rather than a crash
        return set()
    return {action.dest.split(".")[0] for action in parser._actions if action.dest != "help"}


def _nearest(key: str, valid: set[str]) -> str:
    """``did you mean 'x'?`` for the valid key closest to ``key`` (or to its last part)."""
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    close = close or difflib.get_close_matches(key.rsplit(".", 1)[-1], sorted(valid), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    if valid and len(valid) <= 30:
        return f"valid: {', '.join(sorted(valid))}"
    return "see --help for the valid keys"


#: The Trainer arguments where an integer counts batches and a float is a fraction of them.
BATCH_LIMITS = tuple(f"limit_{stage}_batches" for stage in ("train", "val", "test", "predict"))


def whole_numbers_as_batch_counts(parser: LightningArgumentParser) -> None:
    """``--trainer.limit_val_batches 1`` (or ``1`` in a config) means one batch, as
    ``Trainer(limit_val_batches=1)`` does, and ``1.0`` all of them.

    Lightning types these ``Union[float, int, None]``, and jsonargparse tries the union's types
    in that order, so ``1`` became ``1.0``: every batch instead of one (the footgun Lightning
    warns about in its docs). Trying ``int`` first keeps what was written: ``1`` an int,
    ``1.0`` and ``0.25`` floats.
    """
    for name in BATCH_LIMITS:
        action = parser._option_string_actions.get(f"--trainer.{name}")
        if action is not None and hasattr(action, "_typehint"):
            action._typehint = int | float | None


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
        parser.epilog = STANDALONE_HELP
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
            # One message for weights that do not fit, not torch's list of keys; and nothing
            # left of a run that failed before it trained.
            with removed_unless_started(self.trainer), weights_must_fit(self.trainer, self.model):
                return super()._run_subcommand(subcommand)
        options = self._prepare_subcommand_kwargs(subcommand)  # with model and datamodule
        config = self.config[subcommand].clone().as_dict()
        command(**provided_arguments(command, trainer=self.trainer, config=config), **options)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MethodCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ViewGrid, "view_grid")
        whole_numbers_as_batch_counts(parser)

    def _parse_ckpt_path(self) -> None:
        """Checks a ``--ckpt_path`` and compares it with the configured model instead of obeying it.

        Before anything is built or written (no log folder yet), the file must be one the
        subcommand can use: present, a file (a folder gets the ``last.ckpt`` inside
        suggested), readable to the end, and for fit, validate and test a Lightning
        checkpoint (``read_checkpoint`` and ``check_restorable`` of
        ``distill.commands.checkpoint``). ``last`` is the newest version's ``last.ckpt``
        (``_resolve_last``); Lightning's other values (``best``, ``hpc``, ``registry``, URLs)
        are left to Lightning.

        LightningCLI replaces the configured model (class and arguments) with the
        checkpoint's, so a Supervised config resumed from a KD checkpoint silently trains KD
        and command-line model arguments are silently dropped. Here the configuration
        applies: a checkpoint of another class is refused, and arguments that differ from
        the checkpoint's are listed in a warning (not for eval and export, which read the
        backbone alone). A fit's optimiser is compared too: another class is refused, other
        arguments are named (``distill.resume.check_resumed_optimizer``).
        """
        subcommand = self.config.get("subcommand")
        if subcommand == "fit":
            self._continue_slurm_job()
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path == "last" and subcommand in ("fit", "validate", "test"):
            ckpt_path = self.config[subcommand].ckpt_path = self._resolve_last(subcommand)
        if subcommand == "fit":  # before the checkpoint's arguments are compared: one message
            self._check_log_folder(self.config.fit)
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
        if not isinstance(saved, dict) or subcommand in COMMANDS:
            # eval and export read the backbone alone, strictly, and say what does not fit.
            return
        if model is None:
            return super()._parse_ckpt_path()
        configured = (model.get("init_args") or Namespace()).clone().as_dict()
        if subcommand == "fit":
            check_resumed_optimizer(saved, configured.get("optimizer"), ckpt_path)
        record = saved.get("teacher") if isinstance(saved.get("teacher"), dict) else {}
        left_out = record.get("in_checkpoint") is False
        teacher_note = TEACHER_RELOADED if left_out else TEACHER_NOT_READ
        changed = [
            f"{key}: {hparams[key]!r} -> {configured[key]!r}"
            + (teacher_note if key in ("teacher_checkpoint", "teacher") else "")
            for key in sorted(hparams)
            if not key.startswith("_") and key in configured and hparams[key] != configured[key]
        ]
        if changed:
            rank_zero_warn(
                f"model arguments differ from the checkpoint's ({ckpt_path}); the configured "
                f"values apply: {'; '.join(changed)}"
            )

    def _continue_slurm_job(self) -> None:
        """A fit whose SLURM job was requeued continues its own run: the same command resumes
        from the ``last.ckpt`` of the job's log folder (``distill.slurm.job_folder``:
        ``version_<SLURM_JOB_ID>``) whatever ``--ckpt_path`` says (it named the state the
        job's first run started from), and a seed that the config leaves to chance
        (``seed_everything: true``) is the one in the folder's ``config.yaml``, so the config
        is the run's own (``KeptConfig`` keeps the file and refuses another config).
        """
        config = self.config.fit
        dirpath = (config.get("checkpoint") or Namespace()).get("dirpath")
        folder = job_folder(config.trainer.clone().as_dict(), dirpath)
        if folder is None:
            return
        saved_config = folder / "config.yaml"
        if config.get("seed_everything") is True and saved_config.is_file():
            saved_seed = (yaml.safe_load(saved_config.read_text()) or {}).get("seed_everything")
            if isinstance(saved_seed, int) and not isinstance(saved_seed, bool):
                config.seed_everything = saved_seed
        own = folder / "checkpoints" / "last.ckpt"
        if not own.is_file():
            return
        given = config.get("ckpt_path")
        instead = f", not --ckpt_path {given}" if given not in (None, "last", str(own)) else ""
        rank_zero_info(
            f"SLURM job {folder.name.removeprefix('version_')} runs again (requeued): resuming "
            f"from its own {own}{instead}"
        )
        config.ckpt_path = str(own)

    def _resolve_last(self, subcommand: str) -> str | None:
        """``--ckpt_path last``: the newest version's ``last.ckpt`` under the run's root.

        Lightning looks for it in this run's own new version folder, which is empty, and fits
        from scratch with a warning. Where runs share one checkpoint folder Lightning finds
        it, and ``last`` is left to it; so it is for validate and test without a checkpoint.
        A fit without one starts fresh, as Lightning's would, and says so.
        """
        config = self.config[subcommand]
        dirpath = (config.get("checkpoint") or Namespace()).get("dirpath")
        logs = logs_folder(config.trainer.clone().as_dict(), dirpath)
        if logs is None:
            return "last"
        found = newest_last_checkpoint(logs)
        if found is not None:
            rank_zero_info(f"--ckpt_path last: {found} (the newest version's under {logs})")
            return str(found)
        if subcommand != "fit":
            return "last"
        rank_zero_info(
            f"--ckpt_path last: no {logs / 'version_*' / 'checkpoints' / 'last.ckpt'} yet; "
            "starting a fresh fit"
        )
        return None

    def before_instantiate_classes(self) -> None:
        """A fresh fit reads the teacher's weights (``model.init_args.teacher_checkpoint`` or
        ``teacher.weights``) when it starts (a resumed one takes the teacher in its
        checkpoint): a path that does not exist is refused now, before the run's log folder
        is made."""
        config = self.config.get(self.subcommand) if self.subcommand == "fit" else None
        if config is None or config.get("ckpt_path") or config.get("model") is None:
            return
        init_args = config.model.get("init_args") or Namespace()
        key, path = "model.init_args.teacher_checkpoint", init_args.get("teacher_checkpoint")
        teacher = init_args.get("teacher")
        if isinstance(teacher, dict) and isinstance(teacher.get("architecture"), str):
            spec = TeacherSpec(teacher["architecture"], teacher.get("weights"))
            if spec.weights_kind == "file":  # not a torchvision weights name, not timm's hub
                key, path = "model.init_args.teacher.weights", spec.weights
        if isinstance(path, str) and path and not os.path.exists(path):
            raise ConfigError(
                f"{key}: {path!r} does not exist (working directory {os.getcwd()!r}): give the "
                "teacher's run directory (its trainer.default_root_dir), a checkpoint file or a "
                "state-dict file."
            )

    def _check_log_folder(self, config: Namespace) -> None:
        """A fit that comes back to a log folder of a fixed name (a requeued SLURM job's) goes
        on there only with its ``config.yaml``'s config (``distill.runs.reuse_problem``):
        checked here, before the trainer is built and writes its first log file there."""
        folder = fixed_log_folder(config.trainer.clone().as_dict())
        if folder is None or not (folder / "config.yaml").is_file():
            return
        dump = self._parser("fit").dump(config, skip_none=False)
        problem = reuse_problem(folder / "config.yaml", dump, config.get("ckpt_path"))
        if problem is not None:
            raise ConfigError(problem)
        # The run goes on in its own folder: Lightning's advice that the checkpoint folder is
        # not empty (meant for a fresh run over an old one) does not apply.
        warnings.filterwarnings(
            "ignore",
            f"Checkpoint directory .*{re.escape(folder.name)}.checkpoints exists and is not empty",
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
        if self.subcommand == "fit":
            callbacks = [*callbacks, TrainingStarted()]
        trainer = super()._instantiate_trainer(config, callbacks)
        for index, callback in enumerate(trainer.callbacks):
            if type(callback) is ModelSummary:  # Lightning's default one, not a user's own
                trainer.callbacks[index] = CountedModelSummary(callback._max_depth)
        return trainer


#: Said of a changed ``teacher_checkpoint`` on resume: the checkpoint's teacher is used.
TEACHER_NOT_READ = " (not read: the teacher is the one in the checkpoint)"
#: Said of a changed teacher of a checkpoint that left its teacher out: it is read again.
TEACHER_RELOADED = (
    " (read: the checkpoint left the teacher out; its weights must be the ones it recorded)"
)

#: What ``distill --help`` says of the commands that are not LightningCLI's.
STANDALONE_HELP = "Without a config: " + "; ".join(
    f"distill {name}: {docstring_parser.parse(function.__doc__).short_description.rstrip('.')} "
    f"(distill {name} --help)."
    for name, function in STANDALONE.items()
)

#: Trainer settings under ``eval`` and ``export``, over the config's.
COMMAND_TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def _find_user_error(error: BaseException | None) -> Exception | None:
    """The ConfigError, NonFiniteLossError or OutputError behind ``error``, which may be wrapped.

    Lightning's ``MisconfigurationException`` (``--trainer.max_epochs -5``) is a
    ``ConfigError``, and an ``OSError`` of a write (disk full, read-only) an ``OutputError``.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError | NonFiniteLossError | OutputError):
            return error
        if isinstance(error, MisconfigurationException):
            return ConfigError(str(error))
        written = output_error(error)
        if written is not None:
            return written
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


def _quiet_lightning_all_gather_warning() -> None:
    """Hides the FutureWarning every DDP process printed at its first all-gather.

    Lightning's ``all_gather`` (2.6.6, the newest; every queue, bank and k-NN gather of
    distill goes through it) calls ``torch.distributed.nn.functional.all_gather``, which torch
    2.14 deprecates: one line per process, from every rank of every node, that no user can act
    on. Only that message, raised from that Lightning module, is ignored.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        category=FutureWarning,
        module=r"lightning\.fabric\.utilities\.distributed",
    )


class _DropLitLoggerTip(logging.Filter):
    """Drops the advertisement Lightning 2.6 logs whenever a Trainer has no LitLogger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_litlogger_tip() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())


def build_cli(args: list[str] | None = None, **kwargs) -> DistillCLI:
    """Builds (and, with a subcommand in ``args``, runs) the CLI; ``kwargs`` go to LightningCLI.

    For programs that need the trainer afterwards or extra ``trainer_defaults`` (e.g. a
    benchmark's timing callback); ``main`` is the command line's entry point.
    """
    _quiet_lightning_leafspec_warning()
    _quiet_lightning_all_gather_warning()
    _quiet_litlogger_tip()
    return DistillCLI(
        Method,
        ViewDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        # No prefix matching: a misspelt --trainer.max_epoch must fail, not guess.
        parser_kwargs={"allow_abbrev": False},
        parser_class=DistillArgumentParser,
        args=args,
        **{"save_config_callback": KeptConfig, **kwargs},
    )


#: Exit codes: 2 a configuration mistake, 1 a non-finite loss, 74 a file that could not be
#: written (disk full, read-only: sysexits' EX_IOERR), 128 + signal number after a SIGTERM
#: (143: schedulers requeue) or SIGINT (130) that wrote an interrupted checkpoint; SLURM's
#: requeue signal (SIGUSR1) exits with 143 too, the code of the SIGTERM that ends a requeued job.
EXIT_CONFIG, EXIT_NONFINITE, EXIT_WRITE, EXIT_SIGTERM, EXIT_SIGINT = 2, 1, 74, 143, 130

#: Exit code by the kind of error ``main`` prints.
EXIT_CODES = {ConfigError: EXIT_CONFIG, NonFiniteLossError: EXIT_NONFINITE, OutputError: EXIT_WRITE}


@contextlib.contextmanager
def _thread_write_errors_left_to_the_caller() -> Iterator[None]:
    """Within the block, a thread that hands its failed write to the thread it serves (keeps
    it as ``thread.exception``, as TensorBoard's event writer does) prints no traceback:
    ``main`` reports it once, when that thread raises it."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        handed_over = getattr(args.thread, "exception", None) is args.exc_value
        if not (handed_over and output_error(args.exc_value) is not None):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def main(args: list[str] | None = None) -> None:
    """Runs the CLI on ``args`` (default: ``sys.argv[1:]``); see the ``EXIT_*`` codes."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        with _thread_write_errors_left_to_the_caller():
            if argv[:1] and argv[0] in STANDALONE:  # no config, so no LightningCLI
                name = argv[0]
                description = docstring_parser.parse(STANDALONE[name].__doc__).short_description
                parser = DistillArgumentParser(prog=f"distill {name}", description=description)
                run_standalone(name, argv[1:], parser)
            else:
                build_cli(args)
    except SIGTERMException as stop:  # also a first Ctrl-C (see MethodCheckpoint)
        if getattr(stop, "run_finished", False):  # after the last epoch: nothing left to do
            raise SystemExit(0) from None
        if getattr(stop, "requeue", False):  # SLURM's requeue signal, on rank 0
            requeue(stop.checkpoint)
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
