"""Train the particle model from a Hydra config (``conf/train.yaml``).

`run(cfg)` is what ``python train.py`` calls after composing the config; tests call it
directly with a composed config.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fracscope.models.checkpoint import init_weights_from
from fracscope.settings import check_keys, settings_from_config

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where a training run wrote its outputs and how it ended."""

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)


# Groups Hydra instantiates: their constructors refuse arguments they do not take.
TRAIN_GROUPS = ("data", "model", "trainer", "callbacks", "logger")


@dataclass(frozen=True)
class TrainPaths:
    output_dir: str


@dataclass(frozen=True)
class TrainSettings:
    """The top level of conf/train.yaml besides the `TRAIN_GROUPS` (read once by `run`)."""

    paths: TrainPaths
    task_name: str = "train"
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms
    threads: int | None = None  # torch.set_num_threads; None = torch's default
    ckpt_path: str | None = None  # resume this run's checkpoint
    init_from: str | None = None  # fine-tune from these weights

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainSettings:
        """From the composed config; a SettingsError names an unknown key or a bad value."""
        where = "the train config"
        check_keys(cfg, [f.name for f in fields(cls)] + list(TRAIN_GROUPS), where)
        return settings_from_config(cls, {k: cfg[k] for k in cfg if k not in TRAIN_GROUPS}, where)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a `_target_` (callbacks / loggers groups)."""
    if not group:
        return []
    return [instantiate(v) for v in group.values() if isinstance(v, DictConfig) and "_target_" in v]


def _snapshot(cfg: DictConfig, out: Path) -> None:
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - ${hydra:...} outside a Hydra run
        text = OmegaConf.to_yaml(cfg, resolve=False)
    (out / "config.yaml").write_text(text)


def run(cfg: DictConfig) -> RunResult:
    """Train (or resume / fine-tune) one model; returns the run's outputs.

    Keys read: seed, deterministic, threads, ckpt_path (resume a run), init_from
    (fine-tune from weights), paths.output_dir, and the data / model / trainer /
    callbacks / logger groups.
    """
    settings = TrainSettings.from_config(cfg)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    L.seed_everything(settings.seed, workers=True)
    out = Path(settings.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _snapshot(cfg, out)

    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    config = dm.describe()
    config["encoder"] = str(cfg.model.net.get("encoder", ""))  # the section net has none
    config["in_channels"] = int(cfg.model.net.get("in_channels", config.get("in_channels", 1)))
    config["training_run"] = str(out)
    # (`config` is also instantiate()'s own first parameter: bind it through a partial.)
    module = instantiate(cfg.model, _partial_=True, _convert_="all")(config=config, class_weights=dm.class_weights())
    if settings.init_from:
        rep = init_weights_from(module.net, settings.init_from)
        log.info("init_from %s: %d tensors loaded, %d skipped", rep.source, rep.loaded, len(rep.skipped))
        module.hparams["config"]["init_from"] = str(rep.source)

    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, deterministic=settings.deterministic
    )
    trainer.fit(module, datamodule=dm, ckpt_path=settings.ckpt_path or None)

    ckpt_cb = trainer.checkpoint_callback
    best = Path(ckpt_cb.best_model_path) if ckpt_cb is not None and ckpt_cb.best_model_path else None
    # The un-monitored checkpoint callback (callbacks.latest_checkpoint) keeps the latest epoch.
    latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None and cb.best_model_path]
    last_path = latest[0] if latest else (ckpt_cb.last_model_path if ckpt_cb is not None else "")
    last = Path(last_path) if last_path else None
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = RunResult(out, best, last, dict(module.best_metrics), final)
    if trainer.is_global_zero:
        summary = {
            "best_checkpoint": str(best) if best else None,
            "last_checkpoint": str(last) if last else None,
            "best_metrics": result.best_metrics,
            "final_metrics": {k: v for k, v in final.items() if math.isfinite(v)},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return result
