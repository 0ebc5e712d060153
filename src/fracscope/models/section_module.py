"""`SectionModule`: the LightningModule that trains the section net (`fracscope.models.section_net`).

Batches (`fracscope.data.section_data`) are dicts: ``x`` float (N, 4, S, S), section windows
(`fracscope.sections`), and ``label`` int64 (N,), the class index (`CLASS_NAMES` order).

Loss: cross-entropy weighted per class by the data module's `class_weights` (square root of
the inverse class frequency in the training set). Logged as ``train/…`` and ``val/…``:
``loss`` per step / epoch; per epoch ``accuracy`` and ``macro_f1`` (`fracscope.scores.ClassScores`
over the epoch's sections); ``val/macro_f1`` is the monitored value.

Hyperparameters are plain dicts so checkpoints load with ``weights_only=True``; ``config``
holds what export needs (the window, class names, ...) plus, in saved checkpoints,
``best_metrics``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from fracscope.models.module import ParticleModule, _plain, better_best_metrics, store_best_metrics
from fracscope.models.section_net import SectionNet, SectionNetConfig
from fracscope.scores import ClassScores
from fracscope.settings import check_keys

MONITOR = "val/macro_f1"


class SectionModule(L.LightningModule):
    """Class-weighted cross-entropy on a `SectionNet`.

    Parameters
    ----------
    net : dict
        `SectionNetConfig` fields.
    optimizer, scheduler : callable, optional
        Partials (Hydra ``_partial_: true``), as for `ParticleModule`.
    config : dict, optional
        Plain-typed facts saved for export (`SectionDataModule.describe`).
    class_weights : list of float, optional
        CE weight per class (`SectionDataModule.class_weights`); None = unweighted.
    """

    def __init__(
        self,
        net: dict,
        optimizer: Any = None,
        scheduler: Any = None,
        config: dict | None = None,
        class_weights: Any = None,
    ) -> None:
        super().__init__()
        net_cfg = _plain(net)
        check_keys(net_cfg, list(SectionNetConfig.__dataclass_fields__), "the model config's net section")
        class_weights = _plain(class_weights)
        self.save_hyperparameters({"net": net_cfg, "config": _plain(config or {}), "class_weights": class_weights},
                                  logger=False)
        self.net = SectionNet(SectionNetConfig.from_dict(net_cfg))
        self.register_buffer("class_ce_weights",
                             torch.tensor(class_weights, dtype=torch.float32) if class_weights else None,
                             persistent=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._labels: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
        self.best_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["x"])
        target = batch["label"].long()
        loss = F.cross_entropy(logits.float(), target, weight=self.class_ce_weights)
        self.log(f"{stage}/loss", loss.detach(), on_step=stage == "train", on_epoch=True,
                 batch_size=int(target.shape[0]), sync_dist=stage != "train", prog_bar=True)
        self._labels[stage].append((target.cpu().numpy(), logits.detach().argmax(1).cpu().numpy()))
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def _epoch_scores(self, stage: str) -> dict[str, float]:
        parts, self._labels[stage] = self._labels[stage], []
        if not parts:
            return {}
        scores = ClassScores.from_labels(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        out = {f"{stage}/accuracy": scores.accuracy, f"{stage}/macro_f1": scores.macro_f1}
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}

    def on_train_epoch_end(self) -> None:
        self.log_dict(self._epoch_scores("train"))

    def on_validation_epoch_end(self) -> None:
        flat = self._epoch_scores("val")
        self.log_dict(flat)
        if self.trainer.sanity_checking:
            return
        monitor = flat.get(MONITOR, float("nan"))
        self.best_metrics = better_best_metrics(self.best_metrics, flat, monitor, self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_best_metrics(checkpoint, self.best_metrics)

    # Same optimiser / scheduler wiring as the other modules (OneCycle gets its step count from the trainer).
    configure_optimizers = ParticleModule.configure_optimizers
