"""The commands: [project.scripts] resolve, --help describes, a usage mistake is one line and exit status 2."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fracscope.cli import USAGE_STATUS, ArgumentParser, UsageError, one_line, usage_errors

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _run(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    if debug:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_every_script_names_a_main_of_the_package() -> None:
    assert set(SCRIPTS) == {f"fracscope-{x}" for x in ("infer", "train", "synth", "pores3d", "evaluate", "export", "calibrate")}
    for name, target in SCRIPTS.items():
        module, _, attr = target.partition(":")
        # Read, not imported: the training commands' modules import torch.
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        assert attr in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, name


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["infer.py"], ["fracscope-infer", "input=", "model_path=", "detect=learned|classical|tiled"]),
        (["train.py"], ["fracscope-train", "experiment=", "ckpt_path=", "callbacks: default, none"]),
        pytest.param(["-m", "fracscope.evaluate"], ["fracscope-evaluate", "dataset=", "model_path="],
                     marks=pytest.mark.train),  # fracscope.evaluate imports the training stack
        (["-m", "fracscope.pores3d"], ["fracscope-pores3d", "input=", "voxel_size_um="]),
        (["-m", "fracscope.synth"], ["fracscope-synth", "kind=crops|electrode", "preset: gp, p"]),
        (["-m", "fracscope.calibrate"], ["fracscope-calibrate", "image,page,particle_id,class", "phase_model_path="]),
    ],
)
def test_help_says_what_the_command_does(command, says) -> None:
    proc = _run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    for text in says:
        assert text in proc.stdout, text
    assert "powered by Hydra" not in proc.stdout  # Hydra's generic header is replaced


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["infer.py", "nosuchkey=1"], "fracscope-infer: error: Could not override 'nosuchkey'"),
        (["infer.py", "input=/no/such/dir", "output=/tmp/unused"], "fracscope-infer: error: input not found"),
        (["infer.py", "detect=nope"], "(options: classical, learned, tiled)"),
        (["infer.py", "input=["], "fracscope-infer: error: cannot parse 'input=['"),
        pytest.param(["-m", "fracscope.evaluate", "model_path=m.onnx"],
                     "fracscope-evaluate: error: missing value for 'dataset' in the evaluate config", marks=pytest.mark.train),
    ],
)
def test_a_usage_mistake_is_one_line_and_status_2(command, message) -> None:
    proc = _run(*command)
    assert proc.returncode == USAGE_STATUS, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_the_debug_switch_shows_the_traceback() -> None:
    proc = _run("infer.py", "nosuchkey=1", debug=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "nosuchkey" in proc.stderr


def test_usage_errors_turn_settings_errors_into_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_, usage_errors("fracscope-x"):
        raise UsageError("unknown key 'thresh'; valid keys: threshold, window\n(more detail)")
    assert exit_.value.code == USAGE_STATUS
    assert capsys.readouterr().err == "fracscope-x: error: unknown key 'thresh'; valid keys: threshold, window\n"
    with pytest.raises(KeyError), usage_errors("fracscope-x"):  # a bug is not a usage mistake
        raise KeyError("oops")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UsageError), usage_errors("fracscope-x"):
        raise UsageError("shown with its traceback")


def test_one_line_keeps_the_cause() -> None:
    try:
        try:
            raise KeyError("Key 'x' is not in struct")
        except KeyError as inner:
            raise ValueError("Could not override 'x'.\nTo append to your config use +x=1") from inner
    except ValueError as exc:
        assert one_line(exc) == "Could not override 'x': \"Key 'x' is not in struct\""


def test_argparse_usage_error_is_one_line(capsys) -> None:
    parser = ArgumentParser(prog="fracscope-export")
    parser.add_argument("checkpoint")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([])
    assert exit_.value.code == USAGE_STATUS
    err = capsys.readouterr().err
    assert err.startswith("fracscope-export: error: ") and len(err.splitlines()) == 1
