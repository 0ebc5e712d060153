"""Issue 20: ``executor=dask`` writes what the local run writes, on a real `distributed.LocalCluster`
of worker processes (no mock): the same tables, maps, summary and error rows; a worker killed
mid-run; the client killed and the run resumed (on either executor); an unreachable scheduler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")  # the .[dask] extra (part of .[dev])

from fracscope.cli import compose  # noqa: E402
from fracscope.executor import ExecutorSettings  # noqa: E402
from fracscope.io import write_image_tiff  # noqa: E402
from fracscope.pipeline import run  # noqa: E402

compose_infer = partial(compose, "infer")
# One onnxruntime thread everywhere: the same sums in the same order, so the same numbers to the last bit.
SAME_MATH = ("model_threads=1", "report.n_boot=50", "progress=false")
LOCAL = ("detect_workers=0", "detect.threads=1", *SAME_MATH)


def _dask(address: str, *, learned_detector: bool = True) -> tuple[str, ...]:
    threads = ("detect.threads=1",) if learned_detector else ()
    return ("executor=dask", f"executor.address={address}", "executor.model_threads=1", *threads, *SAME_MATH)


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """Two groups of three synthetic fields, and a file that is not an image."""
    from fracscope.synth import load_config, make_field

    cfg = load_config("p", overrides=["electrode.field_px=[512,640]"])
    root = tmp_path_factory.mktemp("fields")
    for group, seed in (("A", 11), ("B", 12)):
        (root / group).mkdir()
        for i in range(3):
            item = make_field(cfg, seed, i)
            write_image_tiff(root / group / f"f{i}.tif", item.image.pixels, item.image.pixel_size_um)
    (root / "B" / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    return root


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-threaded worker processes, as `dask scheduler` + `dask worker` give."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def local_run(fields, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    outcome = run(compose_infer(f"input={fields}", f"output={out}", *LOCAL))
    return out, outcome


def _sorted_table(path: Path, keys=("image", "page", "particle_id")) -> pd.DataFrame:
    table = pd.read_csv(path)
    keys = [k for k in keys if k in table.columns]
    return table.sort_values(keys).reset_index(drop=True)


def _summary_numbers(path: Path) -> dict:
    """summary.json without its provenance, flattened to path -> value."""
    summary = json.loads(path.read_text())
    summary.pop("provenance")
    flat: dict = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}/{i}")
        else:
            flat[prefix] = node

    walk(summary, "")
    return flat


def _assert_same_results(local: Path, other: Path) -> None:
    # Counts, classes, ids and boxes exactly; measured numbers to float rounding (a sum over a float32
    # map can differ in its last bit between two processes).
    pd.testing.assert_frame_equal(_sorted_table(local / "particles.csv"), _sorted_table(other / "particles.csv"),
                                  check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(_sorted_table(local / "images.csv"), _sorted_table(other / "images.csv"))
    pd.testing.assert_frame_equal(_sorted_table(local / "errors.csv"), _sorted_table(other / "errors.csv"))
    ours, theirs = _summary_numbers(local / "summary.json"), _summary_numbers(other / "summary.json")
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if isinstance(value, float):
            assert theirs[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert theirs[key] == value, key
    for folder in ("instances", "phases"):
        names = sorted(p.name for p in (local / folder).iterdir())
        assert names == sorted(p.name for p in (other / folder).iterdir())
        for name in names:
            assert (local / folder / name).read_bytes() == (other / folder / name).read_bytes(), f"{folder}/{name}"


def test_a_local_cluster_writes_what_the_local_run_writes(fields, local_run, tmp_path):
    local, local_outcome = local_run
    out = tmp_path / "dask"
    outcome = run(compose_infer(f"input={fields}", f"output={out}", "executor=dask", "executor.n_workers=2",
                                "detect.threads=1", *SAME_MATH))
    assert local_outcome.n_images == outcome.n_images == 6 and outcome.n_particles == local_outcome.n_particles > 0
    assert [f[0] for f in outcome.failures] == [str(fields / "B" / "broken.tif")] and outcome.exit_code == 1
    # Records are committed in input order: rows come in the same order, the image tables byte for byte.
    assert pd.read_csv(local / "particles.csv")[["image", "particle_id", "class"]].equals(
        pd.read_csv(out / "particles.csv")[["image", "particle_id", "class"]])
    for name in ("images.csv", "errors.csv"):
        assert (local / name).read_bytes() == (out / name).read_bytes(), name
    _assert_same_results(local, out)
    coco = [json.loads((d / "predictions_coco.json").read_text()) for d in (local, out)]
    assert coco[0]["images"] == coco[1]["images"]
    assert [(a["segmentation"], a["category_id"]) for a in coco[0]["annotations"]] == [
        (a["segmentation"], a["category_id"]) for a in coco[1]["annotations"]]
    # The review sample depends on the particles, not on where or in which order they were analysed.
    for sheet in sorted((local / "review").glob("*.png")):
        assert sheet.read_bytes() == (out / "review" / sheet.name).read_bytes(), sheet.name
    assert not list(out.rglob("*.tmp"))


def _overlapping_on_a_worker(stream: list[dict], name: str, min_s: float = 0.05) -> int:
    """Pairs of `name` tasks whose compute spans overlap by `min_s` or more on one worker (the scheduler's
    task stream; a task that ends as the next starts can overlap it by a clock tick)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for entry in stream:
        if name in str(entry["key"]):
            for s in entry["startstops"]:
                if s["action"] == "compute":
                    spans.setdefault(entry["worker"], []).append((s["start"], s["stop"]))
    pairs = 0
    for found in spans.values():
        found.sort()
        pairs += sum(min(a[1], b[1]) - b[0] >= min_s for a, b in zip(found, found[1:]))
    return pairs


def test_a_single_threaded_worker_measures_an_image_while_the_next_runs_its_networks(fields, local_run, cluster,
                                                                                    tmp_path):
    """A task hands its worker thread on after the networks (`distributed.secede`) and measures and writes
    on its own: on single-threaded workers, tasks of one worker overlap, and the results are still the
    local run's, each image committed once with its files on disk."""
    local, _ = local_run
    out = tmp_path / "overlap"
    client = distributed.Client(cluster, set_as_default=False)
    try:
        client.get_task_stream()  # starts the scheduler's recording
        start = time.time()
        outcome = run(compose_infer(f"input={fields}", f"output={out}", *_dask(cluster.scheduler_address)))
        stream = client.get_task_stream(start=start)
    finally:
        client.close()
    assert outcome.n_images == 6  # 7 tasks (a bad file among them) on 2 workers: >= 3 on one of them
    assert _overlapping_on_a_worker(stream, "analyse_file") >= 2
    stages = json.loads((out / "timings.json").read_text())["stage_s"]
    # Each image was measured outside its worker thread slot (`write` also holds the client's report), its
    # networks inside.
    assert stages["worker"] - stages["worker_slot"] >= 0.99 * stages["measure"] > 0
    assert stages["worker_slot"] >= 0.99 * (stages["detect"] + stages["model"]) > 0
    _assert_same_results(local, out)
    assert not list(out.rglob("*.tmp"))


def test_the_pages_of_a_stack_are_each_measured_outside_the_worker_slot_as_locally(cluster, tmp_path):
    """A multi-page file is one task: it hands its thread on after each page's networks and takes a thread
    back (`distributed.rejoin`) before the next page's; the pages come out as locally, in page order."""
    from fracscope.io.tagged import SEMTags, write_sem_tiff
    from fracscope.synth import load_config, make_field

    cfg = load_config("p", overrides=["electrode.field_px=[512,640]"])
    folder = tmp_path / "in"
    folder.mkdir()
    pages = [make_field(cfg, 21, i).image for i in range(3)]
    write_sem_tiff(folder / "stack.tif", [p.pixels for p in pages], SEMTags(fei_pixel_size_um=pages[0].pixel_size_um))
    write_image_tiff(folder / "single.tif", make_field(cfg, 22, 0).image.pixels, pages[0].pixel_size_um)
    local = run(compose_infer(f"input={folder}", f"output={tmp_path / 'local'}", *LOCAL))
    on_dask = run(compose_infer(f"input={folder}", f"output={tmp_path / 'dask'}", *_dask(cluster.scheduler_address)))
    assert on_dask.n_images == local.n_images == 4 and on_dask.n_particles == local.n_particles > 0
    images = pd.read_csv(tmp_path / "dask" / "images.csv")
    assert images[images["image"].str.endswith("stack.tif")]["page"].tolist() == [0, 1, 2]
    stages = json.loads((tmp_path / "dask" / "timings.json").read_text())["stage_s"]
    assert stages["worker"] - stages["worker_slot"] >= 0.99 * stages["measure"] > 0
    # ... and every page's networks ran back in a worker thread slot.
    assert stages["worker_slot"] >= 0.99 * (stages["detect"] + stages["model"]) > 0
    _assert_same_results(tmp_path / "local", tmp_path / "dask")


def test_a_worker_killed_mid_image_leaves_complete_tables_without_duplicates(fields, local_run, cluster, tmp_path):
    local, _ = local_run
    out = tmp_path / "killed"
    client = distributed.Client(cluster, set_as_default=False)
    pids = client.run(os.getpid)
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=run(compose_infer(
            f"input={fields}", f"output={out}", *_dask(cluster.scheduler_address))))
    )
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any("analyse_file" in str(k) for k in keys)]
        if busy:
            killed = busy[0]
            os.kill(pids[killed], signal.SIGKILL)  # the nanny starts a new worker; the scheduler reruns its task
        time.sleep(0.05)
    thread.join(timeout=300)
    client.close()
    assert killed is not None, "no task was ever seen running"
    result = outcome["result"]
    images = pd.read_csv(out / "images.csv")
    assert not images.duplicated(["image", "page"]).any() and len(images) == 6
    assert not pd.read_csv(out / "particles.csv").duplicated(["image", "page", "particle_id"]).any()
    _assert_same_results(local, out)
    assert result.n_retried >= 1  # counted in the progress lines and timings.json
    assert json.loads((out / "timings.json").read_text())["n_retried"] == result.n_retried


def _rows(path: Path) -> int:
    try:
        return max(len(path.read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("resume_with", ["dask", "local"])
def test_a_killed_client_is_resumed_on_either_executor(fields, local_run, cluster, tmp_path, resume_with):
    local, _ = local_run
    out = tmp_path / "resumed"
    args = [f"input={fields}", f"output={out}", *_dask(cluster.scheduler_address)]
    proc = subprocess.Popen([sys.executable, "-m", "fracscope.infer", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while _rows(out / "images.csv") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    done_before = _rows(out / "images.csv")
    assert 2 <= done_before < 6, "the client was not killed mid-run"
    again = LOCAL if resume_with == "local" else _dask(cluster.scheduler_address)
    outcome = run(compose_infer(f"input={fields}", f"output={out}", "resume=true", *again))
    assert outcome.n_images == 6 - done_before
    images = pd.read_csv(out / "images.csv")
    assert not images.duplicated(["image", "page"]).any() and len(images) == 6
    _assert_same_results(local, out)


def test_an_unreachable_scheduler_is_one_line_and_exit_2(tmp_path, fields):
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "fracscope.infer", f"input={fields}", f"output={out}", "executor=dask",
         "executor.address=tcp://127.0.0.1:9", "executor.connect_timeout_s=2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in lines[0], proc.stderr
    assert not out.exists()  # refused before anything was written


def test_dask_settings_need_one_place_for_the_workers(fields, tmp_path):
    with pytest.raises(ValueError, match="exactly one of executor.address"):
        run(compose_infer(f"input={fields}", f"output={tmp_path / 'o'}", "executor=dask"))
    with pytest.raises(ValueError, match="got address, n_workers"):
        ExecutorSettings(name="dask", address="tcp://x:1", n_workers=2)
    with pytest.raises(ValueError, match="executor.cluster must be one of"):
        ExecutorSettings(name="dask", cluster="lsf")


def test_the_slurm_recipe_makes_the_job_script_it_says(tmp_path):
    """README's SLURM recipe, checked against dask-jobqueue's own job script (no cluster here)."""
    import importlib.util
    import signal

    if importlib.util.find_spec("dask_jobqueue") is None:  # not imported here: it sets a Ctrl-C handler
        pytest.skip("dask-jobqueue is not installed")
    from fracscope.executor.dask import jobqueue_cluster

    handler = signal.getsignal(signal.SIGINT)

    settings = ExecutorSettings(
        name="dask", cluster="slurm", jobs=4, cores=32, processes=32, memory="120GB", walltime="04:00:00",
        queue="compute", account="battery-lab", job_script_prologue=["source /shared/fracscope/.venv/bin/activate"],
    )
    cluster = jobqueue_cluster(settings)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C still ends the run with its one line
    assert "#SBATCH -p compute" in script and "#SBATCH -A battery-lab" in script
    assert "#SBATCH --cpus-per-task=32" in script and "#SBATCH -t 04:00:00" in script
    assert "#SBATCH --mem=112G" in script  # 120 GB as SLURM counts it (GiB)
    assert "source /shared/fracscope/.venv/bin/activate" in script
    assert "--nthreads 1" in script and "--nworkers 32" in script  # 32 single-threaded workers per job


def test_a_mosaic_is_analysed_as_tiles_on_the_workers_as_locally(cluster, tmp_path):
    """detect=tiled: each tile is a task of its own; the result is the local executor's, tile by tile."""
    from fracscope.synth import load_config, make_field

    item = make_field(load_config("p", overrides=["electrode.field_px=[1024,1536]"]), 5, 0)
    folder = tmp_path / "in"
    folder.mkdir()
    write_image_tiff(folder / "mosaic.tif", item.image.pixels, item.image.pixel_size_um)
    tiles = ("detect=tiled", "detect.tile_px=640", "detect.overlap_px=300")
    local = run(compose_infer(f"input={folder}", f"output={tmp_path / 'local'}", *tiles, "detect_workers=0",
                              *SAME_MATH))
    client = distributed.Client(cluster, set_as_default=False)
    try:
        on_dask = run(compose_infer(f"input={folder}", f"output={tmp_path / 'dask'}", *tiles,
                                    *_dask(cluster.scheduler_address, learned_detector=False)))
        # 12 tile tasks ran besides the file's own task (their keys name the tile function).
        tasks = client.run_on_scheduler(lambda dask_scheduler: [str(e[0]) for e in dask_scheduler.transition_log])
    finally:
        client.close()
    assert sum("analyse_tile_task" in k for k in set(tasks)) == 12
    assert on_dask.n_particles == local.n_particles > 20
    _assert_same_results(tmp_path / "local", tmp_path / "dask")


def test_a_local_cluster_the_run_starts_leaves_glibc_its_adaptive_mmap_threshold():
    # A fresh process: a nanny writes its environment into the process that runs it, so an earlier cluster of
    # this test session would leak MALLOC_TRIM_THRESHOLD_ into later ones.
    code = (
        "import os\n"
        "from fracscope.executor import ExecutorSettings\n"
        "from fracscope.executor.dask import connect\n"
        "if __name__ == '__main__':\n"
        "    client, cluster = connect(ExecutorSettings(name='dask', n_workers=1))\n"
        "    print(sorted(client.run(lambda: os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')).values()))\n"
        "    client.close(); cluster.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['unset']"


def test_a_worker_started_with_a_trim_threshold_gets_glibcs_adaptive_thresholds_back():
    code = (
        "from fracscope.executor.work import keep_large_arrays_on_the_heap\n"
        "print(keep_large_arrays_on_the_heap())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    unset = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    dask_like = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                               env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"})
    assert unset.stdout.split() == ["False"]  # nothing to undo: glibc's own adaptive mode is on
    assert dask_like.stdout.split() == ["True"]  # glibc accepted both thresholds (this is Linux with glibc)
