"""Model backends behind one interface: onnxruntime (CPU / CUDA) and eager PyTorch.

Every backend takes crops ``float32 (N, C, S, S)`` (C = 2: normalised image, own mask) and returns
probabilities ``(class_probs (N, K), phase_probs (N, P, S, S))`` — the same quantities the ONNX
graph outputs (softmax included, see :mod:`fracscope.model_file`) — plus the :class:`ModelMetadata`
that says what the channels mean and what the model was trained on.

Example
-------
>>> backend = load_backend("model.onnx", device="cpu")                         # doctest: +SKIP
>>> class_probs, phase_probs = backend.predict_batched(crops, batch_size=32)   # doctest: +SKIP
>>> backend.metadata.class_names                                              # doctest: +SKIP
('intact', 'mildly_damaged', 'broken')
"""

from __future__ import annotations

import abc
import functools
from pathlib import Path
from typing import Any

import numpy as np

from fracscope.model_file import (
    INPUT_NAME,
    OUTPUT_NAMES,
    BackendUnavailableError,
    TRAIN_EXTRA_INSTALL,
    ModelMetadata,
    open_onnx_session,
    parse_device,
    require_torch,
    sha256_of,
)

ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)
TORCH_SUFFIXES: tuple[str, ...] = (".ckpt",)
BACKENDS: tuple[str, ...] = ("onnx", "torch")


class Backend(abc.ABC):
    """A loaded model that maps crops to class and phase probabilities.

    Attributes
    ----------
    metadata: what the model expects and was trained on.
    device: 'cpu' or 'cuda[:N]'.
    path: the model file, or None for an in-memory network.
    """

    name: str = ""
    metadata: ModelMetadata
    device: str
    path: Path | None

    @abc.abstractmethod
    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one batch (already validated, N ≥ 1)."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, S, S) every sample must have."""
        m = self.metadata
        return (m.in_channels, m.crop_size, m.crop_size)

    @functools.cached_property
    def sha256(self) -> str | None:
        """SHA-256 of the model file (None for in-memory networks)."""
        return sha256_of(self.path) if self.path is not None else None

    def _validate(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"crops must have shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.metadata
        return (np.zeros((0, len(m.class_names)), np.float32),
                np.zeros((0, len(m.phase_names), m.crop_size, m.crop_size), np.float32))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities for a whole batch in one call.

        Parameters
        ----------
        x: float32 (N, C, S, S), any N (including 0).

        Returns
        -------
        class_probs: float32 (N, K); phase_probs: float32 (N, P, S, S).
        """
        x = self._validate(x)
        if len(x) == 0:
            return self._empty()
        return self._run(x)

    def predict_batched(self, x: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`predict`, in chunks of ``batch_size`` to bound memory."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = self._validate(x)
        if len(x) == 0:
            return self._empty()
        parts = [self._run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate([c for c, _ in parts]), np.concatenate([p for _, p in parts])

    def __repr__(self) -> str:
        m = self.metadata
        return (f"{type(self).__name__}(path={str(self.path) if self.path else None!r}, device={self.device!r}, "
                f"precision={m.precision!r}, crop_size={m.crop_size})")


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------


class OnnxBackend(Backend):
    """onnxruntime inference on an exported fracscope ``.onnx`` (fp32 or int8).

    Parameters
    ----------
    path: the ``.onnx`` file (must carry fracscope metadata).
    device: 'cpu', 'cuda' or 'cuda:N'. CUDA needs the ``onnxruntime-gpu`` package.
    threads: intra-op threads (None = onnxruntime's default, all cores).

    Raises
    ------
    FileNotFoundError, MetadataError, BackendUnavailableError
    """

    name = "onnx"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = _existing(path, ONNX_SUFFIXES, "an ONNX model (.onnx)")
        self.device = device
        self._session, self.metadata = open_onnx_session(self.path, ModelMetadata, device, threads)

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, in priority order."""
        return list(self._session.get_providers())

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        class_probs, phase_probs = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return class_probs, phase_probs


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


class TorchBackend(Backend):
    """Eager PyTorch inference from a Lightning checkpoint (channels_last, inference_mode).

    Parameters
    ----------
    ckpt_path: a ``.ckpt`` written by fracscope training.
    device: 'cpu', 'cuda' or 'cuda:N'.

    Use :meth:`from_network` to wrap an in-memory network (tests, comparisons).
    """

    name = "torch"

    def __init__(self, ckpt_path: str | Path, device: str = "cpu") -> None:
        path = _existing(ckpt_path, TORCH_SUFFIXES, "a Lightning checkpoint (.ckpt)")
        require_torch(f"the torch backend (checkpoint {path})")
        from fracscope.models.checkpoint import load_network

        network, metadata = load_network(path, ModelMetadata)
        self._setup(network, metadata, device, Path(ckpt_path))

    @classmethod
    def from_network(cls, network: Any, metadata: ModelMetadata, device: str = "cpu") -> TorchBackend:
        """Wrap a network ``x -> (class_logits, phase_logits)`` without a file."""
        import copy

        self = cls.__new__(cls)
        self._setup(copy.deepcopy(network), metadata, device, None)
        return self

    def _setup(self, network: Any, metadata: ModelMetadata, device: str, path: Path | None) -> None:
        import torch

        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"device={device} but torch sees no CUDA device (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda})"
            )
        self._device = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
        self._net = network.to(device=self._device, dtype=torch.float32, memory_format=torch.channels_last).eval()
        self.metadata = metadata
        self.device = device
        self.path = path

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self._device).contiguous(memory_format=torch.channels_last)
            class_logits, phase_logits = self._net(t)
            class_probs = torch.softmax(class_logits.float(), dim=1)
            phase_probs = torch.softmax(phase_logits.float(), dim=1)
            return (class_probs.cpu().numpy().astype(np.float32),
                    np.ascontiguousarray(phase_probs.cpu().numpy(), dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def _existing(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file; expected {what}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path} is not {what} (suffix {path.suffix!r})")
    return path


def load_backend(path: str | Path, backend: str | None = None, device: str = "cpu",
                 threads: int | None = None) -> Backend:
    """Open a model file with the right backend.

    Parameters
    ----------
    path: ``.onnx`` (onnxruntime) or ``.ckpt`` (PyTorch).
    backend: 'onnx' or 'torch'; None picks by suffix. A mismatch with the file kind is an error.
    device: 'cpu', 'cuda' or 'cuda:N'.
    threads: onnxruntime intra-op threads (ignored by the torch backend).

    Raises
    ------
    FileNotFoundError, ValueError, MetadataError, BackendUnavailableError
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    kind = "onnx" if suffix in ONNX_SUFFIXES else "torch" if suffix in TORCH_SUFFIXES else None
    if kind is None:
        raise ValueError(f"{path}: unknown model file kind {suffix!r}; expected .onnx (onnxruntime) or .ckpt (torch)")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend is not None and backend != kind:
        hint = (f"export it first (export needs the training stack: {TRAIN_EXTRA_INSTALL}): "
                "python -m fracscope.export CKPT OUT.onnx, or give backend=torch" if backend == "onnx"
                else "the torch backend needs the training checkpoint (.ckpt), not an exported .onnx")
        raise ValueError(f"backend={backend!r} cannot load {path} ({kind} file); {hint}")
    if kind == "onnx":
        return OnnxBackend(path, device=device, threads=threads)
    return TorchBackend(path, device=device)
