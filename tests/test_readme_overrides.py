"""Every ``python train.py …`` line of the README's train-examples block runs (fast_dev_run).

Paths in the examples are replaced: the COCO set by a tiny one written here, checkpoints by a
state dict of the default network, run directories by tmp folders. The data are shrunk to
the smoke size; the example's own overrides (encoder, crop size, losses) are kept.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch)

REPO = Path(__file__).resolve().parents[1]
SMALL_DATA = [
    "data.synth.presets=[gp]",
    "data.synth.n_crops=10",
    "data.synth.n_field_particles=0",
    "data.loader.batch_size=4",
    "trainer.fast_dev_run=true",
    "trainer.enable_progress_bar=false",
    "threads=2",
]


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- BEGIN train-examples -->(.*?)<!-- END train-examples -->", text, re.S)
    assert block, "train-examples block missing from README.md"
    return [shlex.split(line.strip())[2:] for line in block.group(1).splitlines()
            if line.strip().startswith("python train.py")]


def test_block_has_the_promised_examples() -> None:
    joined = [" ".join(c) for c in readme_commands()]
    for needle in ("model.net.encoder=", "data.crop.size=", "model.loss.", "data.format=coco", "init_from=", "-m "):
        assert any(needle in j for j in joined), needle


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    from fracscope.data import write_dataset
    from fracscope.models import NetConfig, build_model
    from fracscope.synth import generate_crops, load_config

    items = list(generate_crops(load_config("gp", ["crops.pixel_size_um=[0.08,0.08]"]), 6, seed=1))
    coco = write_dataset(root / "coco", items, format="coco")
    ckpt = root / "default.pt"
    torch.save(build_model(NetConfig()).state_dict(), ckpt)
    return {"coco": coco, "ckpt": ckpt, "root": root}


def _substitute(args: list[str], assets: dict, run_dir: Path) -> list[str]:
    out = []
    for a in args:
        key, _, value = a.partition("=")
        if key == "data.path":
            a = f"data.path={assets['coco']}"
        elif key == "init_from" and not (REPO / value).exists():
            a = f"init_from={assets['ckpt']}"  # a shipped model file (models/...) is used as it is
        elif key == "ckpt_path" or key.startswith("hydra."):
            continue  # resuming needs a real interrupted run: covered by tests/test_train.py
        out.append(a)
    multirun = "-m" in out or "--multirun" in out
    out.append(f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}")
    return out + SMALL_DATA


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_commands())))
def test_readme_line_runs(index: int, assets, tmp_path, monkeypatch) -> None:
    args = readme_commands()[index]
    if "trainer=gpu" in args and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    monkeypatch.setenv("FRACSCOPE_CACHE", str(assets["root"] / "cache"))
    run_dir = tmp_path / "run"
    argv = ["train.py", *_substitute(args, assets, run_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(REPO)
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    sys.path.insert(0, str(REPO))
    try:
        import train  # the repo-root script

        train.main()
    finally:
        sys.path.remove(str(REPO))
        GlobalHydra.instance().clear()
    written = list(run_dir.rglob("config.yaml"))
    assert written, f"{' '.join(argv)} wrote no run directory"
    if "-m" in args:
        assert len(list(run_dir.glob("*/config.yaml"))) == 4
