"""What every command line shares: one-line usage errors with exit status 2, Hydra apps, argparse.

The commands are the ``[project.scripts]`` in pyproject.toml (``fracscope-infer``, ...). A usage
mistake (an unknown or malformed override, a bad value, a missing input or model file, a missing
mandatory key) ends a command with ONE line on stderr, ``fracscope-infer: error: <message>``, and
exit status 2, as argparse does. ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) shows the traceback.
Ctrl-C is one line too (exit status 130), saying how to go on where the command can.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fracscope.assets import CONF_DIR

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: argparse's status for a usage mistake.
USAGE_STATUS = 2
#: The shell's status for a command ended by Ctrl-C (128 + SIGINT).
INTERRUPTED_STATUS = 130
#: Set to 1 for a traceback instead of the one-line message (Hydra reads the same variable).
DEBUG_ENV = "HYDRA_FULL_ERROR"


class UsageError(ValueError):
    """A mistake in how a command was called; the message says what to change."""


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _usage_error_types() -> tuple[type[BaseException], ...]:
    # ValueError covers UsageError, the settings' errors (unknown keys, bad values) and OmegaConf's
    # ValidationError; MissingConfigException (an unknown group option) is also an OSError.
    from hydra.errors import ConfigCompositionException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    return (ValueError, FileNotFoundError, ConfigCompositionException, OverrideParseException, MissingMandatoryValue)


def one_line(exc: BaseException) -> str:
    """The exception as one line: its first line, its cause's first line when that adds something,
    and the options Hydra lists for an unknown config group option."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    override = getattr(exc, "override", None)  # Hydra's OverrideParseException names the override apart
    if override and override not in first:
        first = f"cannot parse {override!r}: {first}"
    options = _listed_options(str(exc))
    if options:
        first = f"{first.rstrip('.')} (options: {', '.join(options)})"
    cause = exc.__cause__
    if cause is not None:
        detail = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
        if detail and detail not in first:
            first = f"{first.rstrip('.')}: {detail}"
    return first


def _listed_options(message: str) -> list[str]:
    """The indented lines under Hydra's "Available options in 'group':"."""
    options: list[str] | None = None
    for line in message.splitlines():
        if line.startswith("Available options in"):
            options = []
        elif options is not None:
            if not line.startswith("\t"):
                break
            options.append(line.strip())
    return options or []


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` on stderr and exit with the usage status."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_STATUS)


@contextlib.contextmanager
def usage_errors(prog: str, debug: bool | None = None) -> Iterator[None]:
    """Turn a usage mistake raised inside the block into one line on stderr and exit status 2.

    `debug` (default: ``HYDRA_FULL_ERROR`` is set) lets the exception through with its traceback.
    """
    try:
        yield
    except _usage_error_types() as exc:
        if _debug() if debug is None else debug:
            raise
        fail(prog, one_line(exc))


def compose(config_name: str, *overrides: str, config_dir: Path = CONF_DIR, hydra_config: bool = False) -> DictConfig:
    """``config_dir/config_name.yaml`` with command-line overrides, composed as the command composes it
    (for code that calls a command's ``run(cfg)`` directly: tests, bench/). `hydra_config` keeps the
    ``hydra`` section."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra_config)


def run_hydra_app(prog: str, task: Callable[[DictConfig], Any], config_name: str, config_dir: Path = CONF_DIR,
                  on_interrupt: Callable[[DictConfig], str] | None = None) -> Any:
    """Run `task(cfg)` as a Hydra app on ``config_dir/config_name.yaml`` and the command line.

    Hydra prints its own composition errors (several lines, exit 1) unless ``HYDRA_FULL_ERROR``
    is set; it is set until the config is composed, so that they reach `usage_errors`.
    The run folder (``hydra.run.dir``) is checked before Hydra creates it; a folder this command
    created is removed again when a usage mistake stops it before it wrote anything.
    Ctrl-C ends the command with one line: "interrupted", and `on_interrupt(cfg)` (how to go on).
    """
    user_value = os.environ.get(DEBUG_ENV)
    user_debug = _debug()
    new_run_dirs: list[Path] = []

    def app(cfg):
        _restore(user_value)
        try:
            with usage_errors(prog, user_debug):
                return task(cfg)
        except (SystemExit, *_usage_error_types()) as exc:
            if new_run_dirs and getattr(exc, "code", USAGE_STATUS) == USAGE_STATUS:
                _remove_unused_run_dir(new_run_dirs)
            raise
        except KeyboardInterrupt:
            if user_debug:
                raise
            _interrupted(prog, on_interrupt(cfg) if on_interrupt else "")

    # Hydra's `detect_task_name` reads the job name (and its log file's) from the module: "infer".
    app.__module__ = prog.removeprefix("fracscope-")
    try:
        import hydra

        with usage_errors(prog, user_debug):
            new_run_dirs = _check_run_dir(config_name, config_dir, sys.argv[1:])
        hydra_app = hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(app)
        os.environ[DEBUG_ENV] = "1"
        with usage_errors(prog, user_debug):
            return hydra_app()
    except KeyboardInterrupt:  # before the task began: nothing to go on from
        if user_debug:
            raise
        _interrupted(prog, "")
    finally:
        _restore(user_value)


def _interrupted(prog: str, hint: str) -> NoReturn:
    print(f"{prog}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
    raise SystemExit(INTERRUPTED_STATUS)


def _check_run_dir(config_name: str, config_dir: Path, args: list[str]) -> list[Path]:
    """Refuse a run folder that cannot be written, before Hydra creates it and opens its log there.

    Returns the folders Hydra will create for it, the run folder first (none when it exists).
    Hydra's own flags (``--help``, ``-m``, ...) and overrides that do not compose leave the checks
    to Hydra.
    """
    if any(arg.startswith("-") for arg in args):
        return []
    try:
        run_dir = Path(os.path.abspath(str(compose(config_name, *args, config_dir=config_dir,
                                                   hydra_config=True).hydra.run.dir)))
    except Exception:  # noqa: BLE001 - it fails again in Hydra's own composition, which reports it
        return []
    created: list[Path] = []
    try:
        existing = run_dir
        while not existing.exists():
            created.append(existing)
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"cannot write the outputs into {run_dir}: {existing} is a file, not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write the outputs into {run_dir}: {existing} is not writable "
                         f"({exc.strerror or exc})") from None
    return created


def _remove_unused_run_dir(created: list[Path]) -> None:
    """Remove the folders this run created (`created`, the run folder first) if the run folder holds
    nothing but Hydra's own files (the job log, ``.hydra/``)."""
    import logging
    import shutil

    from hydra.core.hydra_config import HydraConfig

    run_dir = created[0]
    hydra_cfg = HydraConfig.get()
    if Path(hydra_cfg.runtime.output_dir) != run_dir or not run_dir.is_dir():
        return  # a `${now:...}` run folder resolved to another second
    logs = [h for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir]
    own = {Path(h.baseFilename).name for h in logs} | {hydra_cfg.output_subdir}
    if any(entry.name not in own for entry in run_dir.iterdir()):
        return
    for handler in logs:  # a log file open in it blocks the removal on Windows
        logging.getLogger().removeHandler(handler)
        handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in created[1:]:
        try:
            parent.rmdir()  # only while empty
        except OSError:
            break


def _restore(value: str | None) -> None:
    if value is None:
        os.environ.pop(DEBUG_ENV, None)
    else:
        os.environ[DEBUG_ENV] = value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``prog: error: message``, exit status 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)
