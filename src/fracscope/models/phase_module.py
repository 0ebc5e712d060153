"""`PhaseModule`: the LightningModule that trains the native-resolution phase model.

Batches (`fracscope.data.phase_data`) are dicts: ``x`` float (N, 1, T, T), the normalised
tile at working scale, and ``phases`` int64 (N, T, T), the `Phase` code of every pixel.

Loss: class-weighted cross-entropy plus soft Dice over the solid, pore and crack phases
(Dice is insensitive to how rare crack pixels are). Logged as ``train/…`` and ``val/…``:
``loss``, ``ce``, ``dice``; per epoch ``pore_iou``, ``crack_iou`` (pixel IoU over the
epoch's tiles) and ``miou`` (their mean, the monitored value).

Hyperparameters are plain dicts so checkpoints load with ``weights_only=True``;
``config`` holds what export needs (working pixel size, normalisation, ...) plus, in saved
checkpoints, ``best_metrics``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from fracscope.models.module import ParticleModule, _plain, better_best_metrics, store_best_metrics
from fracscope.models.phase_net import PhaseNet, PhaseNetConfig
from fracscope.settings import check_keys
from fracscope.types import Phase

DEFAULT_PHASE_LOSS: dict[str, Any] = {
    "ce_weight": 1.0,
    "dice_weight": 1.0,
    "phase_weights": [1.0, 1.0, 2.0, 6.0],  # CE weight of background, solid, pore, crack pixels
}
MONITOR = "val/miou"
_SCORED = (Phase.PORE, Phase.CRACK)


def phase_dice_loss(logits: torch.Tensor, target: torch.Tensor, phases: tuple[int, ...]) -> torch.Tensor:
    """1 - mean soft Dice of `phases` over the whole batch."""
    p = torch.softmax(logits.float(), dim=1)
    losses = []
    for k in phases:
        t = (target == k).float()
        inter = (p[:, k] * t).sum()
        losses.append(1.0 - (2 * inter + 1.0) / (p[:, k].sum() + t.sum() + 1.0))
    return torch.stack(losses).mean()


class PhaseModule(L.LightningModule):
    """Weighted cross-entropy + soft Dice on a `PhaseNet`.

    Parameters
    ----------
    net : dict
        `PhaseNetConfig` fields plus ``channels_last`` (bool).
    loss : dict, optional
        Keys of `DEFAULT_PHASE_LOSS`.
    optimizer, scheduler : callable, optional
        Partials (Hydra ``_partial_: true``), as for `ParticleModule`.
    config : dict, optional
        Plain-typed facts saved for export (`PhaseDataModule.describe`).
    class_weights : ignored
        `fracscope.models.train.run` passes the data module's (None here).
    """

    def __init__(
        self,
        net: dict,
        loss: dict | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        config: dict | None = None,
        class_weights: Any = None,
    ) -> None:
        super().__init__()
        net_cfg = _plain(net)
        check_keys(net_cfg, [*PhaseNetConfig.__dataclass_fields__, "channels_last"], "the model config's net section")
        check_keys(_plain(loss or {}), list(DEFAULT_PHASE_LOSS), "the model config's loss section")
        loss = {**DEFAULT_PHASE_LOSS, **_plain(loss or {})}
        self.save_hyperparameters({"net": net_cfg, "loss": loss, "config": _plain(config or {})}, logger=False)
        self.channels_last = bool(net_cfg.get("channels_last", True))
        self.net = PhaseNet(PhaseNetConfig.from_dict(net_cfg))
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.loss_cfg = loss
        self.register_buffer("phase_weights", torch.tensor([float(w) for w in loss["phase_weights"]]), persistent=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._counts = {s: torch.zeros(len(_SCORED), 2, dtype=torch.float64) for s in ("train", "val")}
        self.best_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def compute_loss(self, batch: dict, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        target = batch["phases"].long()
        ce = F.cross_entropy(logits.float(), target, weight=self.phase_weights.to(logits.device))
        dice = phase_dice_loss(logits, target, (Phase.SOLID, Phase.PORE, Phase.CRACK))
        total = self.loss_cfg["ce_weight"] * ce + self.loss_cfg["dice_weight"] * dice
        return {"loss": total, "ce": ce, "dice": dice}

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["x"])
        losses = self.compute_loss(batch, logits)
        n = batch["x"].shape[0]
        for k, v in losses.items():
            self.log(f"{stage}/{k}", v.detach(), on_step=stage == "train", on_epoch=True, batch_size=n,
                     sync_dist=stage != "train", prog_bar=k == "loss")
        pred = logits.detach().argmax(dim=1)
        target = batch["phases"]
        for j, k in enumerate(_SCORED):
            p, t = pred == k, target == k
            self._counts[stage][j, 0] += float((p & t).sum())
            self._counts[stage][j, 1] += float((p | t).sum())
        return losses["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def _epoch_ious(self, stage: str) -> dict[str, float]:
        c = self._counts[stage]
        self._counts[stage] = torch.zeros_like(c)
        ious = {f"{stage}/{Phase(k).name.lower()}_iou": float(c[j, 0] / c[j, 1]) if c[j, 1] > 0 else float("nan")
                for j, k in enumerate(_SCORED)}
        finite = [v for v in ious.values() if math.isfinite(v)]
        if finite:
            ious[f"{stage}/miou"] = sum(finite) / len(finite)
        return {k: v for k, v in ious.items() if math.isfinite(v)}

    def on_train_epoch_end(self) -> None:
        self.log_dict(self._epoch_ious("train"))

    def on_validation_epoch_end(self) -> None:
        flat = self._epoch_ious("val")
        self.log_dict(flat)
        if self.trainer.sanity_checking:
            return
        monitor = flat.get(MONITOR, float("nan"))
        self.best_metrics = better_best_metrics(self.best_metrics, flat, monitor, self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_best_metrics(checkpoint, self.best_metrics)

    # Same optimiser / scheduler wiring as the classifier (OneCycle and cosine get their
    # step count from the trainer).
    configure_optimizers = ParticleModule.configure_optimizers
