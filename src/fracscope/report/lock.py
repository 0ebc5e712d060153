"""One run per output folder: `.fracscope.lock`, held for the whole run.

Two runs writing into one folder interleave their rows (a cut path in images.csv, tables
that disagree with instances/). The lock file is created with O_EXCL, so exactly one run
gets it; it holds JSON naming the owner (pid, host, start time, command) and is removed
when the run ends, whatever ends it (a `with` block: errors and Ctrl-C included).

A lock left by a process that died (SIGKILL, power loss) on this host is taken over with a
warning. A lock of another host cannot be checked from here (the folder may sit on shared
storage, and that run may be alive): it needs ``force_unlock=true``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from fracscope.cli import UsageError

LOCK_FILE = ".fracscope.lock"

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started_utc')}, "
        f"command {owner.get('command')!r}"
    )


class OutputLock:
    """The lock of one output folder; use as ``with OutputLock(folder, force_unlock): ...``.

    Raises
    ------
    fracscope.cli.UsageError
        On entry, when another live run holds the folder, or another host's run does and
        `force_unlock` is false: one line naming the owner.
    """

    def __init__(self, folder: str | os.PathLike, force_unlock: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.force_unlock = force_unlock
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "token": uuid.uuid4().hex,  # tells our lock from a later owner's on release
        }
        self._created_folder = False

    def __enter__(self) -> OutputLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"output {self.folder} is a file, not a folder")
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._create():
            self._take_over(self._read_owner())
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _create(self) -> bool:
        """Create the lock file atomically; False when it exists already."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.owner) + "\n")
        return True

    def _read_owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}  # released in the meantime
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _take_over(self, owner: dict | None) -> None:
        if owner is None:
            raise UsageError(
                f"output {self.folder} is locked by an unreadable {LOCK_FILE}; "
                "remove it if no fracscope run is writing there"
            )
        if owner:  # {} = the lock went away between our try and the read
            same_host = owner.get("host") == self.owner["host"]
            pid = owner.get("pid")
            if same_host and isinstance(pid, int) and _pid_alive(pid):
                raise UsageError(
                    f"output {self.folder} is in use by another fracscope run ({_describe(owner)}); "
                    "wait for it to end or choose another output="
                )
            if not same_host and not self.force_unlock:
                raise UsageError(
                    f"output {self.folder} is locked by a run on another host ({_describe(owner)}); "
                    "if no run is writing there, add force_unlock=true"
                )
            why = "its process is not running" if same_host else "force_unlock=true"
            log.warning("taking over the lock of %s (%s): %s", self.folder, _describe(owner), why)
            self._remove_stale(owner)
        if not self._create():  # another run took it in the meantime
            owner = self._read_owner() or {}
            raise UsageError(f"output {self.folder} is in use by another fracscope run ({_describe(owner)})")

    def _remove_stale(self, owner: dict) -> None:
        """Remove the lock of `owner`, and only that one: two runs taking over one stale lock at once
        must not remove each other's new lock (rename is atomic; whoever moved another's lock puts it back)."""
        moved = self.path.with_name(f"{LOCK_FILE}.{self.owner['token']}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # another run removed it first; `_create` decides who gets the folder
        try:
            if json.loads(moved.read_text(encoding="utf-8")) != owner:
                try:
                    os.link(moved, self.path)  # a fresh lock: back where it was
                except FileExistsError:
                    pass
        except (OSError, ValueError):
            pass
        moved.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours; remove the folder too if this run created it and left it empty."""
        owner = self._read_owner()
        if owner and owner.get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)
        if self._created_folder:
            try:
                self.folder.rmdir()  # only when empty: a run that failed before writing leaves nothing
            except OSError:
                pass


__all__ = ["LOCK_FILE", "OutputLock"]
