"""Issue 19, cases 2 and 4: resume is keyed on the file (not the path string) and on the settings;
a resume with nothing to do changes nothing; one run per output folder (`.fracscope.lock`)."""

import json
import os
import socket
import subprocess
import sys
import time
from functools import partial

import pandas as pd
import pytest

from fracscope.cli import UsageError, compose
from fracscope.io import write_image_tiff
from fracscope.pipeline import run
from fracscope.report.lock import LOCK_FILE, OutputLock

compose_infer = partial(compose, "infer")
FAST = ("detect_workers=0", "report.n_boot=50")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two small synthetic fields, one file each."""
    from fracscope.synth import load_config, make_field

    cfg = load_config("p", overrides=["electrode.field_px=[256,320]"])
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(2):
        item = make_field(cfg, 7, i)
        paths.append(write_image_tiff(root / f"f{i}.tif", item.image.pixels, item.image.pixel_size_um))
    return paths


def _infer(out, input_, *overrides):
    return run(compose_infer(f"input={input_}", f"output={out}", *FAST, *overrides))


def _files(out):
    """Every file under `out` with its bytes and mtime."""
    return {p.relative_to(out): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


def test_relative_then_absolute_path_is_one_image(tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f0.tif").write_bytes(images[0].read_bytes())
    out = tmp_path / "out"
    first = _infer(out, "in")
    (tmp_path / "in" / "f1.tif").write_bytes(images[1].read_bytes())
    second = _infer(out, tmp_path / "in", "resume=true")  # the same folder, named by its absolute path
    assert first.n_images == 1 and second.n_images == 1
    table = pd.read_csv(out / "images.csv")
    assert set(table["image"]) == {"in/f0.tif", str(tmp_path / "in" / "f1.tif")}
    assert len(pd.read_csv(out / "particles.csv")) == first.n_particles + second.n_particles
    assert json.loads((out / "summary.json").read_text())["total"]["n_images"] == 2


def test_resume_with_other_settings_is_refused_unless_forced(tmp_path, images):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "f0.tif").write_bytes(images[0].read_bytes())
    out = tmp_path / "out"
    _infer(out, folder)
    with pytest.raises(UsageError, match=r"pixel_size_um, segmenter; .*resume=force"):
        _infer(out, folder, "resume=true", "segmenter=threshold", "pixel_size_um=0.05")
    assert len(pd.read_csv(out / "images.csv")) == 1  # nothing was written
    (folder / "f1.tif").write_bytes(images[1].read_bytes())
    forced = _infer(out, folder, "resume=force", "segmenter=threshold")
    assert forced.n_images == 1
    runs = json.loads((out / "summary.json").read_text())["provenance"]["runs"]
    assert [r["settings"]["segmenter"] for r in runs] == ["model", "threshold"]
    assert runs[1]["resume"] == "force" and runs[1]["differs_from_earlier"] == ["segmenter"]
    assert [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()] == runs


def test_resume_with_nothing_to_do_changes_no_file(tmp_path, images):
    out = tmp_path / "out"
    _infer(out, images[0].parent)
    before = _files(out)
    time.sleep(0.05)
    again = _infer(out, images[0].parent, "resume=true")
    assert again.n_images == 0
    assert _files(out) == before


def _hold(out, pid, host):
    out.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host, "started_utc": "2026-01-01T00:00:00+00:00", "command": "infer.py"}
    (out / LOCK_FILE).write_text(json.dumps(owner))


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, images):
    out = tmp_path / "out"
    _hold(out, os.getpid(), socket.gethostname())
    with pytest.raises(UsageError, match=rf"in use by another fracscope run \(pid {os.getpid()} on host"):
        _infer(out, images[0])
    assert (out / LOCK_FILE).exists()  # the owner's lock stays
    assert not (out / "images.csv").exists()


def test_a_stale_lock_is_taken_over_and_every_run_releases_its_lock(tmp_path, images, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    _hold(out, dead.pid, socket.gethostname())
    assert _infer(out, images[0]).n_images == 1
    assert "taking over the lock" in caplog.text
    assert not (out / LOCK_FILE).exists()
    with pytest.raises(ValueError, match="pore_weight"):  # a run that fails releases its lock too
        _infer(out, images[0], "pore_weight=0")
    assert not (out / LOCK_FILE).exists()


def test_another_hosts_lock_needs_force_unlock(tmp_path, images):
    out = tmp_path / "out"
    _hold(out, 1, "another-host.example")
    with pytest.raises(UsageError, match=r"another host \(pid 1 on host another-host.example.*force_unlock=true"):
        _infer(out, images[0])
    assert (out / LOCK_FILE).exists()
    with OutputLock(out, force_unlock=True) as lock:
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid() == lock.owner["pid"]
    assert not (out / LOCK_FILE).exists()


def test_a_file_changed_since_it_was_done_keeps_its_rows_with_a_warning(tmp_path, images, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    image = folder / "f0.tif"
    image.write_bytes(images[0].read_bytes())
    out = tmp_path / "out"
    _infer(out, folder)
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = _infer(out, folder, "resume=true")
    assert again.n_images == 0 and "changed since an earlier run" in caplog.text
    assert len(pd.read_csv(out / "images.csv")) == 1
