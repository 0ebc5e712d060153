"""Progress of a bulk run: a line per image in the log, and a bar or the same lines on stderr.

On a terminal stderr shows a tqdm bar; without one (nohup, SLURM, a pipe) it gets the log's
line per image, since a bar redrawn with carriage returns is unreadable in a log file.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger(__name__)


def format_eta(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunProgress:
    """Counts images as they finish; writes one line per image (log, and stderr without a terminal).

    Parameters
    ----------
    total : int or None
        Images expected (the files found; pages of multi-page files may add more): the ETA's base.
    enabled : bool
        Show progress on stderr (the run's ``progress`` key); the log gets its lines either way.
    stream : text stream, optional
        Where progress goes (default: stderr); a terminal gets a bar, anything else lines.
    """

    def __init__(self, total: int | None, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.n_done = 0
        self.n_resumed = 0
        self.n_failed = 0
        self.n_retried = 0  # images run again after their worker died (executor=dask)
        self.t_start = time.perf_counter()
        on_terminal = self.stream.isatty()
        self.lines = enabled and not on_terminal
        self.bar = tqdm(total=total, unit="img", file=self.stream, disable=not (enabled and on_terminal))

    def skip(self, n: int) -> None:
        """Count `n` images done by an earlier run (resume): they shorten the ETA's remainder."""
        self.n_done += n
        self.n_resumed += n
        self.bar.update(n)

    def retried(self, n: int) -> None:
        """Count `n` more runs of an image that were started again because its worker died."""
        self.n_retried += n

    def step(self, name: str, n_particles: int, status: str = "") -> None:
        """One more image finished; `n_particles` is the run's total so far, `status` e.g. "failed"."""
        self.n_done += 1
        self.n_failed += status == "failed"
        elapsed = time.perf_counter() - self.t_start
        rate = n_particles / max(elapsed, 1e-9)
        self.bar.update()
        self.bar.set_postfix(particles=n_particles, per_s=f"{rate:.1f}")
        line = f"image {self.n_done}{f'/{self.total}' if self.total else ''} {name}{f' {status}' if status else ''}: "
        line += f"{n_particles} particles so far, {rate:.1f} particles/s, {self._eta(elapsed)}"
        if self.n_failed or self.n_retried:
            line += f" ({self.n_failed} failed, {self.n_retried} retried)"
        log.info(line)
        if self.lines:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()

    def _eta(self, elapsed: float) -> str:
        if not self.total or self.n_done > self.total:
            return "ETA unknown"
        per_image = elapsed / (self.n_done - self.n_resumed)
        return f"ETA {format_eta(per_image * (self.total - self.n_done))}"
