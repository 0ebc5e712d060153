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
    SectionMetadata,
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
        `DetectorMetadata` (``x -> (N, 2, H, W)``), `PhaseMetadata` (`PhaseNet`,
        ``x -> (N, 4, H, W)`` phase logits) or `SectionMetadata` (`SectionNet`, ``x -> (N, 3)``
        class logits); None: what the checkpoint holds
        (`fracscope.model_file.checkpoint_kind`). A mismatch is an error.

    Returns
    -------
    (network, ModelMetadata, DetectorMetadata, PhaseMetadata or SectionMetadata)

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
    elif found is SectionMetadata:
        from fracscope.models.section_net import build_section_net

        network = build_section_net(net_cfg)
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


def _source_of_onnx(path: Path) -> Path | None:
    """The training checkpoint an exported ONNX model came from (its metadata or a sibling .ckpt), if found."""
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
    return sibling if sibling.exists() else None


def init_weights_from(net: torch.nn.Module, path: str | Path) -> InitReport:
    """Copy matching weights into `net` for fine-tuning (shape mismatches are skipped).

    Parameters
    ----------
    path : str or Path
        A fracscope ``.ckpt``, a ``.pt``/``.pth`` state dict of the network, or an exported
        ``.onnx``: its source checkpoint when that can be found (metadata or sibling), else the
        weights stored in the file itself (`fracscope.models.onnx_weights`; an int8 file gives its
        dequantized weights), e.g. the shipped ``models/fracscope_*.onnx``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    if path.suffix.lower() == ".onnx":
        source = _source_of_onnx(path)
        if source is None:
            return _init_from_onnx_weights(net, path)
        path = source
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


def _init_from_onnx_weights(net: torch.nn.Module, path: Path) -> InitReport:
    """`init_weights_from` a model file with no checkpoint beside it: the file's own weights."""
    from fracscope.models.onnx_weights import state_dict_from_onnx

    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    try:
        sd = state_dict_from_onnx(net, path, torch.zeros(1, first.in_channels, 128, 128))
    except ValueError as err:
        raise ValueError(f"init_from: {err}") from None
    net.load_state_dict(sd, strict=False)
    own = net.state_dict()
    skipped = {k: "not stored in the ONNX file" for k in own if k not in sd and not k.endswith("num_batches_tracked")}
    return InitReport(source=path, loaded=len(sd), skipped=skipped)
