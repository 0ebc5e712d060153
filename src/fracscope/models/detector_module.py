"""`DetectorModule`: the LightningModule that trains the learned particle detector.

Batches (`fracscope.data.detector_data`) are dicts: ``x`` float (N, 1, T, T) the
normalised tile at working scale, ``foreground`` float (N, T, T) in {0, 1},
``distance`` float (N, T, T) per-instance normalised distance, ``instances`` int32
(N, T, T) the ground-truth labels of the tile.

Loss: BCE + soft Dice on the foreground, plus L1 on the distance inside the true
foreground (outside it the distance is never read: `labels_from_maps` masks by the
foreground). Logged as ``train/…`` and ``val/…``: ``loss``, ``bce``, ``dice``,
``dist_l1``, ``fg_iou``; on validation also ``ap50`` and ``f1_50`` on the first
``ap_batches`` batches: the val tiles are post-processed with `labels_from_maps` and
matched to the ground truth with `match_instances` at IoU 0.5; ``ap50`` is
TP / (TP + FP + FN) summed over those tiles (the "AP" of StarDist and Cellpose, a
cheap proxy of COCO AP50 with no scores; particles cut by the tile edge count too).

Hyperparameters are plain dicts so checkpoints load with ``weights_only=True``;
``config`` holds what export needs (working pixel size, normalisation, ...) plus, in
saved checkpoints, ``best_metrics``; ``postprocess`` the `PostprocessParams` written
into the exported model file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from fracscope.detect.matching import match_instances
from fracscope.detect.postprocess import PostprocessParams, labels_from_maps
from fracscope.models.detector_net import DetectorNet, DetectorNetConfig
from fracscope.models.module import ParticleModule, _plain, better_best_metrics, store_best_metrics
from fracscope.settings import check_keys

DEFAULT_DETECTOR_LOSS: dict[str, Any] = {
    "bce_weight": 1.0,  # foreground BCE
    "dice_weight": 1.0,  # foreground soft Dice
    "distance_weight": 2.0,  # L1 on the distance inside the true foreground
    "pos_weight": 1.0,  # BCE weight of foreground pixels
}
MONITOR = "val/ap50"


def foreground_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of the foreground over the whole batch."""
    p = torch.sigmoid(logits.float())
    inter = (p * target).sum()
    return 1.0 - (2 * inter + 1.0) / (p.sum() + target.sum() + 1.0)


class DetectorModule(L.LightningModule):
    """Foreground BCE + Dice and in-particle distance L1 on a `DetectorNet`.

    Parameters
    ----------
    net : dict
        `DetectorNetConfig` fields plus ``channels_last`` (bool).
    loss : dict, optional
        Keys of `DEFAULT_DETECTOR_LOSS`.
    optimizer, scheduler : callable, optional
        Partials (Hydra ``_partial_: true``), as for `ParticleModule`.
    config : dict, optional
        Plain-typed facts saved for export (`DetectorDataModule.describe`).
    class_weights : ignored
        `fracscope.models.train.run` passes the data module's (None here).
    postprocess : dict, optional
        `PostprocessParams` fields for the validation AP and the exported model.
    ap_batches : int
        Validation batches that get the (CPU) post-processing for ``val/ap50``.
    """

    def __init__(
        self,
        net: dict,
        loss: dict | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        config: dict | None = None,
        class_weights: Any = None,
        postprocess: dict | None = None,
        ap_batches: int = 4,
    ) -> None:
        super().__init__()
        net_cfg = _plain(net)
        check_keys(net_cfg, [*DetectorNetConfig.__dataclass_fields__, "channels_last"], "the model config's net section")
        check_keys(_plain(loss or {}), list(DEFAULT_DETECTOR_LOSS), "the model config's loss section")
        loss = {**DEFAULT_DETECTOR_LOSS, **_plain(loss or {})}
        post = dataclasses.asdict(PostprocessParams(**_plain(postprocess or {})))
        self.save_hyperparameters(
            {"net": net_cfg, "loss": loss, "config": _plain(config or {}), "postprocess": post,
             "ap_batches": int(ap_batches)},
            logger=False,
        )
        self.channels_last = bool(net_cfg.get("channels_last", True))
        self.net = DetectorNet(DetectorNetConfig.from_dict(net_cfg))
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.loss_cfg = loss
        self.postprocess = PostprocessParams(**post)
        self.ap_batches = int(ap_batches)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._iou = {"train": [0.0, 0.0], "val": [0.0, 0.0]}  # [intersection, union]
        self._match = [0, 0, 0]  # tp, fp, fn over the AP tiles
        self.best_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ forward / loss
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def compute_loss(self, batch: dict, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted BCE + Dice (foreground) + L1 (distance inside the true foreground)."""
        lc = self.loss_cfg
        fg = batch["foreground"].float()
        logit, dist = out[:, 0].float(), out[:, 1].float()
        pos_weight = torch.tensor(float(lc["pos_weight"]), device=logit.device)
        bce = F.binary_cross_entropy_with_logits(logit, fg, pos_weight=pos_weight)
        dice = foreground_dice_loss(logit, fg)
        dist_l1 = ((dist - batch["distance"].float()).abs() * fg).sum() / fg.sum().clamp_min(1.0)
        total = lc["bce_weight"] * bce + lc["dice_weight"] * dice + lc["distance_weight"] * dist_l1
        return {"loss": total, "bce": bce, "dice": dice, "dist_l1": dist_l1}

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict, stage: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = self(batch["x"])
        losses = self.compute_loss(batch, out)
        n = batch["x"].shape[0]
        for k, v in losses.items():
            self.log(f"{stage}/{k}", v.detach(), on_step=stage == "train", on_epoch=True, batch_size=n,
                     sync_dist=stage != "train", prog_bar=k == "loss")
        pred = out[:, 0].detach() > 0
        true = batch["foreground"] > 0.5
        acc = self._iou[stage]
        acc[0] += float((pred & true).sum())
        acc[1] += float((pred | true).sum())
        return losses, out.detach()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, out = self._step(batch, "val")
        if batch_idx >= self.ap_batches:
            return
        fg = torch.sigmoid(out[:, 0].float()).cpu().numpy()
        dist = out[:, 1].float().cpu().numpy()
        gt = batch["instances"].cpu().numpy()
        for i in range(len(fg)):
            m = match_instances(gt[i], labels_from_maps(fg[i], dist[i], params=self.postprocess), iou=0.5)
            self._match[0] += m.tp
            self._match[1] += m.fp
            self._match[2] += m.fn

    # ------------------------------------------------------------------ epoch ends
    def _epoch_iou(self, stage: str) -> float:
        inter, union = self._iou[stage]
        self._iou[stage] = [0.0, 0.0]
        return inter / union if union > 0 else float("nan")

    def on_train_epoch_end(self) -> None:
        iou = self._epoch_iou("train")
        if math.isfinite(iou):
            self.log("train/fg_iou", iou)

    def on_validation_epoch_end(self) -> None:
        flat = {"val/fg_iou": self._epoch_iou("val")}
        tp, fp, fn = self._match
        self._match = [0, 0, 0]
        if tp + fp + fn:
            flat["val/ap50"] = tp / (tp + fp + fn)
            flat["val/f1_50"] = 2 * tp / (2 * tp + fp + fn)
        elif self.ap_batches > 0:  # no instances anywhere and none predicted: perfect
            flat["val/ap50"] = flat["val/f1_50"] = 1.0
        flat = {k: float(v) for k, v in flat.items() if math.isfinite(v)}
        self.log_dict(flat)
        if self.trainer.sanity_checking:
            return
        monitor = flat.get(MONITOR, flat.get("val/fg_iou", float("nan")))
        self.best_metrics = better_best_metrics(self.best_metrics, flat, monitor, self.current_epoch)

    # ------------------------------------------------------------------ checkpoint / optim
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_best_metrics(checkpoint, self.best_metrics)

    # Same optimiser / scheduler wiring as the classifier (OneCycle and cosine get their
    # step count from the trainer); it only reads the factories, the trainer and parameters().
    configure_optimizers = ParticleModule.configure_optimizers
