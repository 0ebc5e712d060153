"""What a resumed run must agree with: the earlier runs' settings, recorded in `runs.jsonl`.

Every run that writes into an output folder appends one line to `runs.jsonl`: when it
started, its command, its resume mode and `settings`, the settings that change results
(model sha256, detector, segmenter, pixel size, polarity, thresholds; the pipeline says
which). `resume=true` compares its settings with the last recorded run and refuses a
difference with one line naming the keys; `resume=force` goes on and its line records
the keys that differ. A run without resume starts the file afresh.

A resumed run writes its line only when it writes something else (`RunLog.record`), so a
resume with nothing left to do leaves the folder as it was.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fracscope.cli import UsageError

RUNS_JSONL = "runs.jsonl"


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so that settings read back compare equal."""
    return json.loads(json.dumps(value, default=str))


def differing_keys(before: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ, nested mappings as ``outer.inner`` (e.g. ``detect.min_diameter_um``)."""
    keys = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def read_runs(output_dir: str | os.PathLike) -> list[dict]:
    """The run records of an output folder, oldest first (lines cut short by a crash skipped)."""
    path = Path(output_dir) / RUNS_JSONL
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            runs.append(record)
    return runs


class RunLog:
    """This run's line of `runs.jsonl`, checked against the earlier ones at construction.

    Parameters
    ----------
    output_dir : path
        The run's output folder.
    settings : mapping
        The settings that change results (plain JSON values).
    resume : bool or "force"
        The run's resume mode.
    command : str
        The command line, for the record.
    has_results : bool
        Whether the folder holds results of an earlier run (images.csv rows).

    Raises
    ------
    fracscope.cli.UsageError
        `resume=true` with settings that differ from the last recorded run's.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        settings: Mapping[str, Any],
        resume: bool | str,
        command: str,
        has_results: bool,
    ):
        self.path = Path(output_dir) / RUNS_JSONL
        self.resume = resume
        self.earlier = read_runs(output_dir) if resume else []
        settings = _plain(dict(settings))
        differs: list[str] = []
        if self.earlier:
            differs = differing_keys(self.earlier[-1].get("settings", {}), settings)
            if differs and resume != "force":
                raise UsageError(
                    f"resume refused: the settings differ from the earlier run in {self.path.parent} in "
                    f"{', '.join(differs)}; use the same settings, resume=force to mix them, or another output="
                )
        elif resume and has_results:
            differs = ["(no earlier run record)"]  # a folder of an older fracscope: nothing to compare with
            if resume != "force":
                raise UsageError(
                    f"resume refused: {self.path.parent} has results but no {RUNS_JSONL} to check the settings "
                    "against; use resume=force to continue it anyway, or another output="
                )
        self.record = {
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": command,
            "resume": resume,
            "settings": settings,
            "differs_from_earlier": differs,
        }
        self.written = False

    @property
    def runs(self) -> list[dict]:
        """Every run recorded in the folder, this one last (for the provenance)."""
        return [*self.earlier, self.record]

    def record_once(self) -> None:
        """Write this run's line (the first time only): before the run's first output."""
        if self.written:
            return
        self.written = True
        with self.path.open("a" if self.resume else "w", encoding="utf-8") as f:
            f.write(json.dumps(self.record) + "\n")

    def finished_earlier(self, recorded_runs: list | None) -> bool:
        """True when the summary's `runs` (`recorded_runs`) are every run of the folder: the last run closed."""
        return bool(self.earlier) and recorded_runs == self.earlier


__all__ = ["RUNS_JSONL", "RunLog", "differing_keys", "read_runs"]
