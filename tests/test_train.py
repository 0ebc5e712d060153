"""Training through Hydra: fast_dev_run, checkpoint contents, resume, init_from, evaluation, DDP on CPU.

Resume, init_from and evaluation each start from one module-scoped trained checkpoint, as separate
tests: one failure does not hide the others.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fracscope.cli import compose
from fracscope.models.checkpoint import init_weights_from, load_network
from fracscope.models.train import run

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "data.synth.n_crops=10", "threads=2"]

torch.set_num_threads(2)


# Every test here shares one synthetic cache (the smoke set is generated once); see conftest.
pytestmark = [pytest.mark.train, pytest.mark.usefixtures("synth_cache")]


def compose_cfg(out: Path, *overrides: str):
    return compose("train", *SMOKE, f"paths.output_dir={out}", *overrides)


def test_fast_dev_run_writes_run_dir(tmp_path) -> None:
    result = run(compose_cfg(tmp_path, "trainer.fast_dev_run=true"))
    assert (tmp_path / "config.yaml").exists()
    for png in ("val_gallery.png", "confusion_matrix_val.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "val/loss" in result.final_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_cache):
    """One epoch of the smoke model: the checkpoint that resume, init_from and evaluation start from."""
    out = tmp_path_factory.mktemp("trained")
    result = run(compose_cfg(out, "model=cosine", "trainer.max_epochs=1"))
    assert result.best_checkpoint is not None and result.last_checkpoint is not None
    return result


@pytest.mark.slow
def test_training_writes_a_self_describing_checkpoint(trained) -> None:
    assert (trained.output_dir / "metrics.csv").exists()
    ckpt = torch.load(trained.best_checkpoint, map_location="cpu", weights_only=True)  # plain hparams
    cfg = ckpt["hyper_parameters"]["config"]
    for key in ("crop_size", "margin", "normalisation", "class_names", "phase_names", "pixel_size_range_um",
                "pore_polarities", "synth_version", "training_data", "encoder", "in_channels", "best_metrics"):
        assert key in cfg, key
    assert cfg["crop_size"] == 64 and cfg["encoder"] == "resnet18"
    assert cfg["pore_polarities"] == ["dark", "bright"]
    assert "val/macro_f1" in cfg["best_metrics"]


@pytest.mark.slow
def test_resume_continues_from_the_stored_step(trained, tmp_path) -> None:
    # A copy of the run: resuming rewrites its checkpoints, which the other tests read.
    run_dir = shutil.copytree(trained.output_dir, tmp_path / "run")
    last_ckpt = run_dir / trained.last_checkpoint.relative_to(trained.output_dir)
    first = torch.load(last_ckpt, map_location="cpu", weights_only=True)
    resumed = run(compose_cfg(run_dir, "model=cosine", "trainer.max_epochs=2", f"ckpt_path={last_ckpt}"))
    last = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=True)
    assert last["epoch"] > first["epoch"] and last["global_step"] == 2 * first["global_step"]


@pytest.mark.slow
def test_init_from_starts_from_the_checkpoints_weights(trained, tmp_path) -> None:
    loaded, _ = load_network(trained.best_checkpoint)
    fresh, _ = load_network(trained.best_checkpoint)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    rep = init_weights_from(fresh, trained.best_checkpoint)
    assert rep.loaded > 0 and not rep.skipped
    for (k, a), b in zip(loaded.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    tuned = run(compose_cfg(tmp_path, "trainer.fast_dev_run=true", f"init_from={trained.best_checkpoint}"))
    assert tuned.final_metrics


@pytest.mark.slow
def test_evaluation_of_the_checkpoint(trained, tmp_path) -> None:
    """Metrics, kappa and a contact sheet of the checkpoint on annotated images."""
    from fracscope.evaluate import evaluate_items
    from fracscope.synth import generate_crops, load_config

    items = list(generate_crops(load_config("p"), 4, seed=11))
    rep = evaluate_items(items, trained.best_checkpoint, tmp_path / "eval")
    assert rep.metrics["n_particles"] == 4 and "head_kappa" in rep.metrics and "otsu_porosity_mae_pp" in rep.metrics
    assert (tmp_path / "eval" / "misclassified.png").exists() and (tmp_path / "eval" / "particles.csv").exists()


def test_init_from_skips_mismatched_shapes(tmp_path) -> None:
    from fracscope.models import NetConfig, build_model

    src = build_model(NetConfig(decoder_channels=(32, 16, 16, 8, 8)))
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build_model(NetConfig(decoder_channels=(32, 16, 16, 8, 8), num_classes=4))
    rep = init_weights_from(dst, tmp_path / "w.pt")
    assert any("class_head" in k for k in rep.skipped)
    assert torch.equal(dst.encoder.stages[0][0].weight, src.encoder.stages[0][0].weight)
    with pytest.raises(FileNotFoundError):
        init_weights_from(dst, tmp_path / "missing.ckpt")


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_gloo(tmp_path, synth_cache) -> None:
    env = {**os.environ, "FRACSCOPE_CACHE": str(synth_cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *SMOKE[:2], "threads=1", "trainer=ddp", "trainer.max_epochs=1",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stdout + proc.stderr or "GLOBAL_RANK: 1" in proc.stdout + proc.stderr
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_best_metrics_keep_the_best_epoch_and_go_into_the_checkpoint_config():
    """The phase, detector and section modules keep their best epoch this way; the export reads it from the config."""
    from fracscope.models.module import better_best_metrics, store_best_metrics

    best = better_best_metrics({}, {"val/miou": 0.5}, 0.5, 3)
    assert best == {"val/miou": 0.5, "monitor": 0.5, "epoch": 3.0}
    assert better_best_metrics(best, {"val/miou": 0.4}, 0.4, 4) is best
    assert better_best_metrics(best, {"val/miou": 0.9}, float("nan"), 5) is best
    assert better_best_metrics(best, {"val/miou": 0.6}, 0.6, 6)["epoch"] == 6.0
    checkpoint = {"hyper_parameters": {"config": {"task": "phase_map"}, "net": {"width": 8}}}
    store_best_metrics(checkpoint, best)
    assert checkpoint["hyper_parameters"] == {"config": {"task": "phase_map", "best_metrics": best}, "net": {"width": 8}}
    store_best_metrics(empty := {}, {"monitor": 1.0})
    assert empty == {"hyper_parameters": {"config": {"best_metrics": {"monitor": 1.0}}}}
