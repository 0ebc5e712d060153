"""Worker processes die with their parent, whatever killed it (issue 19, case 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")


def _alive_children() -> dict[int, list[int]]:
    """ppid -> pids of the live (not zombie) processes, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the name, in brackets, may hold spaces
        except (OSError, IndexError):
            continue  # ended while we read
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> set[int]:
    children = _alive_children()
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    live = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            live.add(pid)
    return live


def _wait_for(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def test_a_sigkilled_run_leaves_no_worker(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    # The bundled sample (6 images, about 15 s): the detect worker lives from the first image on.
    run = subprocess.Popen([sys.executable, "infer.py", f"output={tmp_path / 'out'}", "detect_workers=1"],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    try:
        def worker_started() -> bool:
            seen.update(_descendants(run.pid))
            return any("spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                       for pid in _alive(seen))

        assert _wait_for(worker_started, 90), "the run started no detect worker"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        _wait_for(lambda: not _alive(seen), 10)
        assert not _alive(seen), "left alive after the parent's SIGKILL"
    finally:
        run.kill()
        run.wait()
        for pid in _alive(seen):  # only the processes this run started
            os.kill(pid, signal.SIGKILL)


# A parent that starts one spawn child which watches it with the portable fallback only, prints the
# child's pid and waits to be killed.
_PARENT = """
import multiprocessing as mp, os, sys, time
from fracscope.child_process import die_with_parent

def child(parent_pid):
    die_with_parent(parent_pid, use_prctl=False)
    time.sleep(120)

if __name__ == "__main__":
    proc = mp.get_context("spawn").Process(target=child, args=(os.getpid(),))
    proc.start()
    print(proc.pid, flush=True)
    time.sleep(120)
"""


def test_the_portable_fallback_ends_a_worker_whose_parent_is_gone(tmp_path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)  # the child's watcher thread is running
        assert _alive({child})
        parent.kill()
        parent.wait(timeout=10)
        _wait_for(lambda: not _alive({child}), 10)
        assert not _alive({child}), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if _alive({child}):
            os.kill(child, signal.SIGKILL)


def test_a_ctrl_c_inside_sigint_ignored_is_raised_when_the_block_ends():
    """Ignoring SIGINT while a worker starts lost a Ctrl-C that came in that moment (the run went on);
    blocking keeps it pending, so it is raised right after the block."""
    import os
    import signal

    import pytest

    from fracscope.child_process import sigint_ignored

    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt):
        with sigint_ignored():
            os.kill(os.getpid(), signal.SIGINT)
            reached_end_of_block = True
    assert reached_end_of_block


def test_a_ctrl_c_that_another_thread_takes_inside_sigint_ignored_is_raised_only_when_the_block_ends():
    """The main thread blocks SIGINT, so the kernel hands it to another thread (a run has decode, writer and
    onnxruntime threads) and Python raised KeyboardInterrupt in the main thread inside the block: inside
    `Process.start()` just after the fork, the child never got its start-up data and printed an EOFError."""
    import threading

    from fracscope.child_process import sigint_ignored

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)  # does not block SIGINT: it takes the signal
    other.start()
    steps = 0
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigint_ignored():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(20):  # Python runs signal handlers between these steps
                    time.sleep(0.01)
                    steps += 1
    finally:
        stop.set()
        other.join()
    assert steps == 20
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


# A parent that detects ahead in one worker (`locate_ahead`, as a run does) with another thread running, and
# gets a Ctrl-C to its process group just as the worker is forked: the moment the race needed.
_CTRL_C_AT_FORK = """
import multiprocessing.util as util, os, signal, sys, threading, time
import numpy as np
from fracscope.locate import locate_ahead
from fracscope.types import SEMImage

real_spawn = util.spawnv_passfds

def spawn_then_ctrl_c(path, args, passfds):
    pid = real_spawn(path, args, passfds)
    if any("spawn_main" in os.fsdecode(arg) for arg in args):  # the worker, not multiprocessing's resource tracker
        os.killpg(0, signal.SIGINT)
        deadline = time.monotonic() + 2  # Python runs the handler here, once the other thread has taken it
        while time.monotonic() < deadline:
            pass
    return pid

util.spawnv_passfds = spawn_then_ctrl_c

if __name__ == "__main__":
    threading.Thread(target=threading.Event().wait, daemon=True).start()  # a run's decode threads
    image = SEMImage(np.zeros((64, 64), np.float32), 0.05)
    try:
        list(locate_ahead([image], {"_target_": "fracscope.detect.classical.ClassicalDetector"}, None, workers=1))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print("not interrupted", flush=True)
"""


def _run_parent_in_its_own_group(tmp_path, source: str) -> subprocess.CompletedProcess:
    """Run `source` as a script in a new session (its Ctrl-C to its process group reaches no one else)."""
    script = tmp_path / "parent.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60,
                          start_new_session=True)


def test_a_ctrl_c_as_a_detect_worker_is_forked_leaves_no_traceback(tmp_path) -> None:
    run = _run_parent_in_its_own_group(tmp_path, _CTRL_C_AT_FORK)
    assert (run.returncode, run.stdout, run.stderr) == (130, "interrupted\n", "")


def _sigint_disposition(i: int) -> tuple[int, bool]:
    return i * i, signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_ordered_map_keeps_the_order_and_its_workers_leave_ctrl_c_to_the_parent() -> None:
    from fracscope.child_process import ordered_map

    here = list(ordered_map(_sigint_disposition, range(7), workers=1))
    pooled = list(ordered_map(_sigint_disposition, range(7), workers=2))
    assert [v for v, _ in here] == [v for v, _ in pooled] == [i * i for i in range(7)]
    assert all(ignored for _, ignored in pooled)  # the generator processes ignore SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the parent's handler is back


# A data generator fanned out to processes (`ordered_map`), its parent's process group given a Ctrl-C while the
# workers are busy: one KeyboardInterrupt in the parent, no worker traceback, no worker left.
_CTRL_C_IN_GENERATOR = """
import os, signal, sys, threading, time
from fracscope.child_process import ordered_map

def slow(i):
    time.sleep(0.5)
    return i

if __name__ == "__main__":
    threading.Timer(1.0, lambda: os.killpg(0, signal.SIGINT)).start()
    try:
        for _ in ordered_map(slow, range(40), workers=2):
            pass
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print("not interrupted", flush=True)
"""


def test_a_ctrl_c_during_generation_leaves_no_worker_traceback(tmp_path) -> None:
    run = _run_parent_in_its_own_group(tmp_path, _CTRL_C_IN_GENERATOR)
    assert (run.returncode, run.stdout, run.stderr) == (130, "interrupted\n", "")
