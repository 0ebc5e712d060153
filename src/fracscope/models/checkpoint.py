"""Rebuilding trained networks: whole checkpoints for inference and export, state dicts for fine-tuning.

Checkpoints hold only plain types (hparams are dicts/lists/str/float), so they load with
`fracscope.model_file.load_checkpoint_dict` (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fracscope.model_file import (
    MetadataError,
    ModelMetadata,
    PhaseMetadata,
    checkpoint_kind,
    load_checkpoint_dict,
    read_metadata,
)


def load_network(path: str | Path, kind: type | None = None) -> tuple[torch.nn.Module, Any]:
    """Rebuild the bare network of a fracscope checkpoint (eval mode, CPU) and its metadata.

    The architecture comes from ``hyper_parameters["net"]``, the weights from the ``net.``
    entries of ``state_dict``; no LightningModule is instantiated.

    Parameters
    ----------
    kind : type, optional
        `ModelMetadata` (particle network, ``x -> (class_logits, phase_logits)``),
        `DetectorMetadata` (``x -> (N, 2, H, W)``) or `PhaseMetadata` (`PhaseNet`,
        ``x -> (N, 4, H, W)`` phase logits); None: what the checkpoint holds
        (`fracscope.model_file.checkpoint_kind`). A mismatch is an error.

    Returns
    -------
    (network, ModelMetadata, DetectorMetadata or PhaseMetadata)

    Raises
    ------
    ValueError
        When the file is not a checkpoint of that kind or its weights do not fit.
    """
    ckpt = load_checkpoint_dict(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if "state_dict" not in ckpt or not isinstance(hparams.get("net"), dict):
        raise ValueError(f"{path}: not a fracscope training checkpoint (no 'state_dict' or no 'net' "
                         f"hyperparameters; keys: {sorted(hparams)})")
    found = checkpoint_kind(hparams)
    if kind is not None and kind is not found:
        raise ValueError(f"{path} holds a {found.KIND} checkpoint, not a {kind.KIND} one")
    net_cfg = {k: v for k, v in hparams["net"].items() if k != "channels_last"}
    if found is ModelMetadata:
        from fracscope.models.unet import build_model

        network = build_model(net_cfg)
    elif found is PhaseMetadata:
        from fracscope.models.phase_net import build_phase_net

        network = build_phase_net(net_cfg)
    else:
        from fracscope.models.detector_net import build_detector_net

        network = build_detector_net(net_cfg)
    try:
        network.load_state_dict(net_state_dict(ckpt), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the network described by its hyperparameters: {err}") from err
    network.eval()
    return network, found.from_hparams(hparams)


def net_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights from a Lightning checkpoint or a plain state dict."""
    sd = ckpt.get("state_dict", ckpt)
    if any(k.startswith("net.") for k in sd):
        return {k[4:]: v for k, v in sd.items() if k.startswith("net.")}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


@dataclass
class InitReport:
    """What `init_weights_from` loaded: tensors copied and skipped (name: reason)."""

    source: Path
    loaded: int
    skipped: dict[str, str]


def _source_of_onnx(path: Path) -> Path:
    """The training checkpoint an exported ONNX model came from (its metadata must say)."""
    try:
        extra = read_metadata(path, ModelMetadata).extra  # unknown top-level keys land in extra too
    except MetadataError:
        extra = {}
    for key in ("source_checkpoint", "checkpoint", "checkpoint_path"):
        cand = extra.get(key)
        if cand:
            cand = Path(cand)
            if not cand.is_absolute():
                cand = path.parent / cand
            if cand.exists():
                return cand
    sibling = path.with_suffix(".ckpt")
    if sibling.exists():
        return sibling
    raise ValueError(
        f"{path}: ONNX graphs cannot be fine-tuned; pass the checkpoint it was exported from "
        "(its metadata names no existing source checkpoint, and no sibling .ckpt exists)"
    )


def init_weights_from(net: torch.nn.Module, path: str | Path) -> InitReport:
    """Copy matching weights into `net` for fine-tuning (shape mismatches are skipped).

    Parameters
    ----------
    path : str or Path
        A fracscope ``.ckpt``, a ``.pt``/``.pth`` state dict of the network, or an
        exported ``.onnx`` whose source checkpoint can be found (metadata or sibling).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    if path.suffix.lower() == ".onnx":
        path = _source_of_onnx(path)
    sd = net_state_dict(load_checkpoint_dict(path))
    own = net.state_dict()
    take, skipped = {}, {}
    for k, v in sd.items():
        if k not in own:
            skipped[k] = "not in this network"
        elif own[k].shape != v.shape:
            skipped[k] = f"shape {tuple(v.shape)} != {tuple(own[k].shape)}"
        else:
            take[k] = v
    if not take:
        raise ValueError(f"init_from: no tensor of {path} fits this network (different encoder?)")
    net.load_state_dict(take, strict=False)
    return InitReport(source=path, loaded=len(take), skipped=skipped)
