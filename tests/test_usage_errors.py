"""Every user mistake ends `infer.py` with one line (issue 19, case 6); Ctrl-C says how to go on."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fracscope.cli import INTERRUPTED_STATUS, USAGE_STATUS, compose
from fracscope.pipeline import RunSettings
from fracscope.report import ReportOptions

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return env


def _infer(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "infer.py", *overrides], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)


def _one_line(proc: subprocess.CompletedProcess, says: str, status: int = USAGE_STATUS) -> None:
    assert proc.returncode == status, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("fracscope-infer: ") and says in proc.stderr, proc.stderr


def test_a_missing_input_leaves_no_output_folder(tmp_path) -> None:
    out = tmp_path / "new" / "out"
    _one_line(_infer(f"input={tmp_path / 'no_such_dir'}", f"output={out}"), "input not found")
    assert not (tmp_path / "new").exists()  # Hydra created it for its log; the run wrote nothing


def test_an_output_path_that_is_a_file(tmp_path) -> None:
    (tmp_path / "results").write_text("")
    _one_line(_infer(f"output={tmp_path / 'results'}"), "is a file, not a folder")


def test_an_output_folder_that_cannot_be_written(tmp_path) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anyway; nobody writes into a process's /proc entry
        if not Path("/proc/1").is_dir():
            pytest.skip("no folder this user cannot write")
        folder = Path("/proc/1")
    _one_line(_infer(f"output={folder}"), "is not writable")


def test_a_model_file_that_is_not_onnx(tmp_path) -> None:
    model = tmp_path / "model.onnx"
    model.write_text("not a model")
    _one_line(_infer(f"phase_model_path={model}", f"output={tmp_path / 'out'}"), "is not a model onnxruntime can load")
    _one_line(_infer(f"model_path={model}", "classify=head", f"output={tmp_path / 'out'}"),
              "is not a model onnxruntime can load")
    assert not (tmp_path / "out").exists()


def test_hydras_hint_for_a_typo_does_not_lead_to_an_ignored_key(tmp_path) -> None:
    # Hydra answers `pixel_sise_um=1` with "use +pixel_sise_um=1"; that is refused too.
    _one_line(_infer("+pixel_sise_um=0.05", f"output={tmp_path / 'out'}"), "unknown key 'pixel_sise_um'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "says"), [
    ("0", "pixel_size_um must be a positive, finite number of µm per pixel, got 0.0"),
    ("-0.05", "pixel_size_um must be a positive, finite number of µm per pixel, got -0.05"),
    ("nan", "pixel_size_um must be a positive, finite number of µm per pixel, got nan"),
    ("inf", "pixel_size_um must be a positive, finite number of µm per pixel, got inf"),
    ("abc", "bad value of 'pixel_size_um' in the infer config: could not convert string to float: 'abc'"),
])
def test_a_pixel_size_that_cannot_be_right_is_refused_before_anything_is_written(tmp_path, value, says) -> None:
    # issue 21: 0 gave areas of 0 µm², -0.05 and abc tracebacks on every image, inf was taken
    out = tmp_path / "out"
    _one_line(_infer(f"pixel_size_um={value}", f"output={out}"), says)
    assert not out.exists()


def test_ctrl_c_is_one_line_that_says_how_to_resume(tmp_path) -> None:
    out = tmp_path / "out"
    # The bundled sample linked 8 times (48 images): on a fast machine the 6 alone can finish between
    # the first images.csv row and the signal. SIGINT to the group, as a terminal's Ctrl-C.
    images = tmp_path / "in"
    images.mkdir()
    for k in range(8):
        for f in sorted((REPO / "data" / "sample").rglob("*.tif")):
            (images / f"{k}_{f.parent.name}_{f.name}").symlink_to(f)
    run = subprocess.Popen([sys.executable, "infer.py", f"input={images}", f"output={out}"], cwd=REPO, env=_env(),
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "images.csv").exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()
    _one_line(subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr), "resume=true",
              status=INTERRUPTED_STATUS)
    assert str(out) in stderr


@pytest.mark.parametrize("option", [field.name for field in dataclasses.fields(ReportOptions)])
def test_every_report_option_is_set_without_plus(option) -> None:
    default = getattr(ReportOptions(), option)
    value = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v / 2,
             tuple: lambda v: (0.0, 5.0, 10.0)}[type(default)](default)
    text = str(list(value)) if isinstance(value, tuple) else str(value).lower()
    settings = RunSettings.from_config(compose("infer", f"report.{option}={text}"))
    assert getattr(settings.report, option) == value


@pytest.mark.parametrize("path", ["/data/a,b/x.tif", "/data/µm (2)/*.tif", "/data/run [3]/a=b.tif"])
def test_awkward_paths_pass_in_double_quotes(path) -> None:
    # Unquoted, Hydra reads a comma as a sweep and stops at non-ASCII letters, '[' and '='.
    assert compose("infer", f'input="{path}"').input == path


def test_the_readmes_awkward_path_example_composes() -> None:
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if "run 3,a" in line)
    args = shlex.split(line)  # as the shell passes them
    assert args[1] == "infer.py"
    cfg = compose("infer", *args[2:])
    assert (cfg.input, cfg.output) == ("/data/run 3,a/µm/*.tif", "/results/Probe ä")
