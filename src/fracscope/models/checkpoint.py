"""Loading trained weights: whole checkpoints for inference, state dicts for fine-tuning.

Checkpoints hold only plain types (hparams are dicts/lists/str/float), so they load
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fracscope.models.unet import NetConfig, ParticleNet


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint with the facts stored beside it.

    config: crop_size, margin, normalisation, class/phase names, pixel-size range,
    pore polarities, synth_version, training_data, best_metrics (see ParticleModule).
    """

    net: ParticleNet
    config: dict[str, Any]
    path: Path


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """`torch.load` with ``weights_only=True`` on CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the network of a fracscope Lightning checkpoint (eval mode, CPU)."""
    ckpt = load_checkpoint_dict(path)
    hp = ckpt.get("hyper_parameters") or {}
    if "net" not in hp:
        raise ValueError(f"{path}: not a fracscope training checkpoint (no 'net' hyperparameters)")
    net_cfg = {k: v for k, v in hp["net"].items() if k != "channels_last"}
    net = ParticleNet(NetConfig.from_dict(net_cfg))
    net.load_state_dict(net_state_dict(ckpt))
    net.eval()
    return LoadedModel(net=net, config=dict(hp.get("config") or {}), path=Path(path))


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
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props.get("fracscope", "{}"))
    extra = meta.get("extra", {}) if isinstance(meta, dict) else {}
    for key in ("source_checkpoint", "checkpoint", "checkpoint_path"):
        cand = meta.get(key) or extra.get(key)
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
