"""A light install (issue 19, case 10): inference runs on the core dependencies, without torch.

The core (``pip install -e .``) is what ``infer.py`` needs; torch, torchvision, lightning and
albumentations come with the ``train`` extra. These tests run ``infer.py`` in a subprocess in which
the training packages cannot be imported, as in a core-only install.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from test_import_graph import import_graph, module_names

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: The training stack: what the `train` extra installs and inference must never import.
TRAINING_PACKAGES = ("torch", "torchvision", "lightning", "albumentations")
#: One sample image keeps the subprocess run short.
ONE_IMAGE = REPO / "data" / "sample" / "GP-NCM_100cyc" / "field_00.tif"

# Runs `script` with `sys.argv[1:]` after making the training packages unimportable, then reports
# which of them ended up in sys.modules anyway.
_WITHOUT_TRAINING = """
import runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class NoTrainingStack:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoTrainingStack())
script = sys.argv[2]
sys.argv = sys.argv[2:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print("training modules loaded: " + (",".join(loaded) or "none"), file=sys.stderr)
"""


def _run_without_training(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAINING, ",".join(TRAINING_PACKAGES), "infer.py", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_core_dependencies_hold_no_training_package_and_dev_installs_train() -> None:
    core = _requirement_names(PYPROJECT["dependencies"])
    train = _requirement_names(PYPROJECT["optional-dependencies"]["train"])
    assert {"onnxruntime", "opencv-python-headless", "hydra-core", "tifffile"} <= core
    assert not core & {"torch", "torchvision", "lightning", "albumentations", "tensorboard", "onnxscript"}
    assert {"torch", "torchvision", "lightning", "albumentations", "tensorboard"} <= train
    assert "fracscope[train]" in PYPROJECT["optional-dependencies"]["dev"]
    # Dask is an extra for executor=dask, not a core dependency; the tests (dev) need it.
    assert not core & {"dask", "distributed", "dask-jobqueue"}
    assert "fracscope[dask]" in PYPROJECT["optional-dependencies"]["dev"]


def test_inference_entry_points_import_no_training_package_at_module_level() -> None:
    """Every module the inference commands reach (deferred imports included) imports the training
    stack only inside functions; the torch backend's checkpoint loader (`fracscope.models`) is cut,
    as it is reached only after `require_torch`."""
    graph = import_graph()
    names = module_names()
    roots = ["fracscope.infer", "fracscope.pores3d.__main__", "fracscope.synth.__main__", "fracscope.calibrate"]
    reached, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module in reached or module.startswith("fracscope.models"):
            continue
        reached.add(module)
        todo.extend(graph[module])
    offenders = {}
    for module in sorted(reached):
        tree = ast.parse(names[module].read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        imported = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        heavy = {m for m in imported if m.partition(".")[0] in TRAINING_PACKAGES}
        if heavy:
            offenders[module] = heavy
    assert "fracscope.pipeline" in reached and "fracscope.runtime" in reached
    assert offenders == {}


def test_infer_runs_without_the_training_stack(tmp_path) -> None:
    proc = _run_without_training(f"input={ONE_IMAGE}", f"output={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training modules loaded: none" in proc.stderr
    assert "particles in 1 images" in proc.stdout
    assert (tmp_path / "out" / "particles.csv").is_file()


def test_a_checkpoint_without_torch_is_one_line_naming_the_train_extra(tmp_path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")  # torch is missing: the file is never read
    proc = _run_without_training(f"input={ONE_IMAGE}", f"output={tmp_path / 'out'}", "backend=torch",
                                 "classify=head", f"model_path={ckpt}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fracscope-infer: error:")]
    assert len(errors) == 1 and "pip install -e '.[train]'" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "training modules loaded: none" in proc.stderr
