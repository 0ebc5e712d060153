"""`ParticleModule`: the LightningModule that trains `ParticleNet` on both tasks.

Batches are dicts (see `fracscope.data.datamodule`):
``x`` float (N, 2, S, S) image + own mask as the network sees it (mask perturbed in training),
``mask`` uint8 (N, S, S) the true own mask, ``phases`` int64 (N, S, S) with 255 = unknown,
``label`` int64 (N,) with -1 = unknown.

Hyperparameters are plain dicts so that checkpoints load with
``torch.load(..., weights_only=True)``; `config` holds what export and inference need
(crop size, margin, normalisation, names, pixel-size range, pore polarities,
synth version, data description) and, in saved checkpoints, ``best_metrics``.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassRecall,
)

from fracscope.models.plots import GalleryItem, plot_confusion, plot_gallery
from fracscope.scores import IGNORE_CLASS, IGNORE_PHASE, ClassScores, confusion_matrix, porosity_errors_pp
from fracscope.classify import combine_class_with_topology
from fracscope.models.unet import NetConfig, ParticleNet
from fracscope.settings import check_keys
from fracscope.types import CLASS_NAMES, PHASE_NAMES, Phase

DEFAULT_LOSS: dict[str, Any] = {
    "class_weight": 1.0,  # weight of the class CE
    "phase_ce_weight": 1.0,
    "dice_weight": 1.0,
    "class_balance": False,  # True: class CE weighted by inverse training frequencies
    "phase_class_weights": None,  # optional CE weights per phase code
    "label_smoothing": 0.0,
}
MONITOR = "val/macro_f1"


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_PHASE) -> torch.Tensor:
    """1 - mean soft Dice over phase channels, on pixels whose target is known."""
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot * valid).sum(dim=(0, 2, 3))
    denom = ((probs + onehot) * valid).sum(dim=(0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - dice.mean()


def better_best_metrics(best: dict[str, float], flat: dict[str, float], monitor: float, epoch: int) -> dict[str, float]:
    """The best epoch's metrics so far: this epoch's `flat` (with its `monitor` value and the epoch) when `monitor`
    beats ``best["monitor"]``, else `best` (the phase, detector and section modules keep them this way)."""
    if math.isfinite(monitor) and monitor > best.get("monitor", -math.inf):
        return {**flat, "monitor": float(monitor), "epoch": float(epoch)}
    return best


def store_best_metrics(checkpoint: dict[str, Any], best_metrics: dict[str, float]) -> None:
    """Put `best_metrics` into a checkpoint's ``hyper_parameters["config"]``: the export writes them into the model
    file's metadata."""
    hp = copy.deepcopy(dict(checkpoint.get("hyper_parameters") or {}))
    cfg = dict(hp.get("config") or {})
    cfg["best_metrics"] = dict(best_metrics)
    hp["config"] = cfg
    checkpoint["hyper_parameters"] = hp


def _plain(obj: Any) -> Any:
    """Recursively turn OmegaConf containers/tuples/numpy scalars into plain Python types."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _metrics(prefix: str) -> MetricCollection:
    n = len(CLASS_NAMES)
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(n, average="micro", ignore_index=IGNORE_CLASS),
            "macro_f1": MulticlassF1Score(n, average="macro", ignore_index=IGNORE_CLASS),
            "recall": MulticlassRecall(n, average=None, ignore_index=IGNORE_CLASS),
            "confusion": MulticlassConfusionMatrix(n, ignore_index=IGNORE_CLASS),
            "phase_iou": MulticlassJaccardIndex(len(PHASE_NAMES), average=None, ignore_index=IGNORE_PHASE),
            "porosity_mae_pp": MeanMetric(nan_strategy="ignore"),
            "porosity_bias_pp": MeanMetric(nan_strategy="ignore"),
        },
        prefix=prefix,
    )


class ParticleModule(L.LightningModule):
    """Class CE + phase CE + Dice on a shared-encoder U-Net.

    Parameters
    ----------
    net : dict
        `NetConfig` fields (encoder, in_channels, decoder_channels, ...) plus
        ``channels_last`` (bool).
    loss : dict
        Keys of `DEFAULT_LOSS`.
    optimizer, scheduler : callable, optional
        Partials (Hydra ``_partial_: true``) taking params / the optimizer. OneCycleLR and
        CosineAnnealingLR get their step count from the trainer.
    config : dict, optional
        Plain-typed facts saved for export (see module docstring).
    class_weights : list of float, optional
        CE weights per class, used when ``loss.class_balance`` is true.
    freeze_segmentation : bool
        Train only the class head: encoder, decoder and phase head keep their weights
        and their BatchNorm statistics (with ``init_from``, a second, cheap stage).
    """

    def __init__(
        self,
        net: dict,
        loss: dict | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        config: dict | None = None,
        class_weights: list[float] | None = None,
        freeze_segmentation: bool = False,
    ) -> None:
        super().__init__()
        net_cfg = _plain(net)
        check_keys(net_cfg, [*NetConfig.__dataclass_fields__, "channels_last"], "the model config's net section")
        check_keys(_plain(loss or {}), list(DEFAULT_LOSS), "the model config's loss section")
        loss = {**DEFAULT_LOSS, **_plain(loss or {})}
        config = _plain(config or {})
        class_weights = _plain(class_weights)
        self.save_hyperparameters(
            {"net": net_cfg, "loss": loss, "config": config, "class_weights": class_weights}, logger=False
        )
        self.channels_last = bool(net_cfg.get("channels_last", True))
        self.net = ParticleNet(NetConfig.from_dict({k: v for k, v in net_cfg.items() if k != "channels_last"}))
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.loss_cfg = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        cw = class_weights if (loss["class_balance"] and class_weights) else None
        self.register_buffer("class_ce_weights", torch.tensor(cw, dtype=torch.float32) if cw else None)
        pw = loss.get("phase_class_weights")
        self.register_buffer("phase_ce_weights", torch.tensor(pw, dtype=torch.float32) if pw else None)
        self.freeze_segmentation = bool(freeze_segmentation)
        if self.freeze_segmentation:
            for name, param in self.net.named_parameters():
                param.requires_grad_(name.startswith("class_head."))
        self.train_metrics = _metrics("train/")
        self.val_metrics = _metrics("val/")
        self._val_store: dict[str, list] = {}
        self.best_metrics: dict[str, float] = {}
        self._confusion: dict[str, np.ndarray] = {}
        self._figures_due = True  # set by each validation; train figures follow it

    def train(self, mode: bool = True) -> ParticleModule:
        super().train(mode)
        if self.freeze_segmentation and mode:
            # Frozen layers also keep their BatchNorm running statistics.
            for name, child in self.net.named_children():
                if name != "class_head":
                    child.eval()
        return self

    # ------------------------------------------------------------------ forward / loss
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def compute_loss(self, batch: dict, class_logits: torch.Tensor, phase_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted sum of class CE, phase CE and phase Dice (unknown targets ignored)."""
        lc = self.loss_cfg
        labels = batch["label"]
        phases = batch["phases"]
        zero = class_logits.sum() * 0.0
        has_label = labels != IGNORE_CLASS
        class_ce = (
            F.cross_entropy(
                class_logits.float(), labels, weight=self.class_ce_weights, ignore_index=IGNORE_CLASS,
                label_smoothing=float(lc["label_smoothing"]),
            )
            if bool(has_label.any())
            else zero
        )
        known = phases != IGNORE_PHASE
        if bool(known.any()):
            phase_ce = F.cross_entropy(
                phase_logits.float(), phases, weight=self.phase_ce_weights, ignore_index=IGNORE_PHASE
            )
            dice = soft_dice_loss(phase_logits, phases)
        else:  # a set without phase masks: learn the class only
            phase_ce = dice = zero
        total = lc["class_weight"] * class_ce + lc["phase_ce_weight"] * phase_ce + lc["dice_weight"] * dice
        return {"loss": total, "class_ce": class_ce, "phase_ce": phase_ce, "dice": dice}

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        class_logits, phase_logits = self(batch["x"])
        losses = self.compute_loss(batch, class_logits, phase_logits)
        n = batch["x"].shape[0]
        for k, v in losses.items():
            self.log(f"{stage}/{k}", v.detach(), on_step=stage == "train", on_epoch=True, batch_size=n,
                     sync_dist=stage != "train", prog_bar=k == "loss")
        metrics = self.train_metrics if stage == "train" else self.val_metrics
        pred_cls = class_logits.detach().argmax(1)
        pred_ph = phase_logits.detach().argmax(1)
        metrics["accuracy"].update(pred_cls, batch["label"])
        metrics["macro_f1"].update(pred_cls, batch["label"])
        metrics["recall"].update(pred_cls, batch["label"])
        metrics["confusion"].update(pred_cls, batch["label"])
        metrics["phase_iou"].update(pred_ph, batch["phases"])
        err = porosity_errors_pp(pred_ph.cpu().numpy(), batch["phases"].cpu().numpy(), batch["mask"].cpu().numpy() > 0)
        err_t = torch.as_tensor(err, dtype=torch.float32, device=self.device)
        metrics["porosity_mae_pp"].update(err_t.abs())
        metrics["porosity_bias_pp"].update(err_t)
        return {"losses": losses, "class_logits": class_logits.detach(), "phase_pred": pred_ph}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")["losses"]["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._step(batch, "val")
        probs = out["class_logits"].float().softmax(1).cpu().numpy()
        phase_pred = out["phase_pred"].cpu().numpy()
        mask = batch["mask"].cpu().numpy() > 0
        store = self._val_store
        store.setdefault("label", []).append(batch["label"].cpu().numpy())
        store.setdefault("head", []).append(probs.argmax(1))
        store.setdefault("topo", []).append(combine_class_with_topology(probs, phase_pred, mask))
        if batch_idx == 0:
            k = min(8, len(probs))
            store["gallery"] = [
                GalleryItem(
                    image=batch["x"][i, 0].float().cpu().numpy(),
                    mask=mask[i],
                    true_phases=batch["phases"][i].cpu().numpy(),
                    pred_phases=phase_pred[i],
                    true_class=int(batch["label"][i]),
                    pred_class=int(probs[i].argmax()),
                    prob=float(probs[i].max()),
                )
                for i in range(k)
            ]

    # ------------------------------------------------------------------ epoch ends
    def _log_metrics(self, metrics: MetricCollection, stage: str) -> dict[str, float]:
        values = metrics.compute()
        metrics.reset()
        p = f"{stage}/"
        flat: dict[str, float] = {
            f"{p}accuracy": float(values[f"{p}accuracy"]),
            f"{p}macro_f1": float(values[f"{p}macro_f1"]),
            f"{p}porosity_mae_pp": float(values[f"{p}porosity_mae_pp"]),
            f"{p}porosity_bias_pp": float(values[f"{p}porosity_bias_pp"]),
        }
        for name, r in zip(CLASS_NAMES, values[f"{p}recall"]):
            flat[f"{p}recall_{name}"] = float(r)
        iou = values[f"{p}phase_iou"]
        flat[f"{p}pore_iou"] = float(iou[Phase.PORE])
        flat[f"{p}crack_iou"] = float(iou[Phase.CRACK])
        self.log_dict({k: v for k, v in flat.items() if math.isfinite(v)}, sync_dist=False)
        self._confusion[stage] = values[f"{p}confusion"].cpu().numpy()
        return flat

    def on_train_epoch_end(self) -> None:
        self._log_metrics(self.train_metrics, "train")
        # Validation ran first in this epoch and decided whether the figures are due.
        if self._figures_due:
            self._write_confusion(self._confusion.pop("train"), "train")

    def on_validation_epoch_end(self) -> None:
        flat = self._log_metrics(self.val_metrics, "val")
        store, self._val_store = self._val_store, {}
        if store.get("label"):
            labels = np.concatenate(store["label"])
            for name in ("head", "topo"):
                scores = ClassScores(confusion_matrix(labels, np.concatenate(store[name])))
                flat[f"val/macro_f1_{name}"] = scores.macro_f1
            self.log_dict(
                {k: flat[k] for k in ("val/macro_f1_head", "val/macro_f1_topo") if math.isfinite(flat[k])}
            )
        if self.trainer.sanity_checking:
            return
        monitor = flat.get(MONITOR, float("nan"))
        best = self.best_metrics.get(MONITOR, -math.inf)
        improved = math.isfinite(monitor) and monitor > best
        if improved:
            self.best_metrics = {k: float(v) for k, v in flat.items() if math.isfinite(v)}
            self.best_metrics["epoch"] = float(self.current_epoch)
        # Figures cost ~1.5 s an epoch on the 2-core CPU: draw them for the best epoch so far and
        # for the last planned one (max_epochs), not every epoch.
        last = self.trainer.max_epochs is not None and self.current_epoch >= self.trainer.max_epochs - 1
        self._figures_due = improved or last or not self.best_metrics
        if not self._figures_due:
            return
        self._write_confusion(self._confusion.pop("val"), "val")
        if self.trainer.is_global_zero and store.get("gallery"):
            fig = plot_gallery(store["gallery"], self._run_path("val_gallery.png"), title=f"epoch {self.current_epoch}")
            self._add_figure("val/gallery", fig)

    def _run_path(self, name: str) -> Path:
        return Path(self.trainer.default_root_dir) / name

    def _add_figure(self, tag: str, fig: Any) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, fig, global_step=self.global_step)

    def _write_confusion(self, cm: np.ndarray, stage: str) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        path = self._run_path(f"confusion_matrix_{stage}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = plot_confusion(cm, path, title=f"{stage} confusion, epoch {self.current_epoch}")
        self._add_figure(f"{stage}/confusion_matrix", fig)

    # ------------------------------------------------------------------ checkpoint / optim
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_best_metrics(checkpoint, self.best_metrics)

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4)
        optimizer = factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        func = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        name = getattr(func, "__name__", "")
        kwargs: dict[str, Any] = {}
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if name == "OneCycleLR":
            kwargs["total_steps"] = total
            if "max_lr" not in getattr(self.scheduler_factory, "keywords", {}):
                kwargs["max_lr"] = optimizer.param_groups[0]["lr"]
        elif name == "CosineAnnealingLR":
            kwargs["T_max"] = total
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
