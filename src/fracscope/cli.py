"""What every command line shares: one-line usage errors with exit status 2, Hydra apps, argparse.

The commands are the ``[project.scripts]`` in pyproject.toml (``fracscope-infer``, ...). A usage
mistake (an unknown or malformed override, a bad value, a missing input or model file, a missing
mandatory key) ends a command with ONE line on stderr, ``fracscope-infer: error: <message>``, and
exit status 2, as argparse does. ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fracscope.assets import CONF_DIR

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: argparse's status for a usage mistake.
USAGE_STATUS = 2
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


def compose(config_name: str, *overrides: str, config_dir: Path = CONF_DIR) -> DictConfig:
    """``config_dir/config_name.yaml`` with command-line overrides, composed as the command composes it
    (for code that calls a command's ``run(cfg)`` directly: tests, bench/)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def run_hydra_app(prog: str, task: Callable[[DictConfig], Any], config_name: str, config_dir: Path = CONF_DIR) -> Any:
    """Run `task(cfg)` as a Hydra app on ``config_dir/config_name.yaml`` and the command line.

    Hydra prints its own composition errors (several lines, exit 1) unless ``HYDRA_FULL_ERROR``
    is set; it is set until the config is composed, so that they reach `usage_errors`.
    """
    import hydra

    user_value = os.environ.get(DEBUG_ENV)
    user_debug = _debug()

    def app(cfg):
        _restore(user_value)
        with usage_errors(prog, user_debug):
            return task(cfg)

    # Hydra's `detect_task_name` reads the job name (and its log file's) from the module: "infer".
    app.__module__ = prog.removeprefix("fracscope-")
    app = hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(app)
    os.environ[DEBUG_ENV] = "1"
    try:
        with usage_errors(prog, user_debug):
            return app()
    finally:
        _restore(user_value)


def _restore(value: str | None) -> None:
    if value is None:
        os.environ.pop(DEBUG_ENV, None)
    else:
        os.environ[DEBUG_ENV] = value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``prog: error: message``, exit status 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)
