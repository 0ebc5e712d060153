"""Model backends behind one interface: onnxruntime (CPU / CUDA) and eager PyTorch.

Every backend takes crops ``float32 (N, C, S, S)`` (C = 2: normalised image, own mask) and returns
probabilities ``(class_probs (N, K), phase_probs (N, P, S, S))`` — the same quantities the ONNX
graph outputs (softmax included, see :mod:`fracscope.export`) — plus the :class:`ModelMetadata`
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
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from fracscope.export import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, MetadataError, ModelMetadata
from fracscope.ort_options import session_options

ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)
TORCH_SUFFIXES: tuple[str, ...] = (".ckpt",)
BACKENDS: tuple[str, ...] = ("onnx", "torch")
# Where ParticleModule keeps the NetConfig dict in its hyperparameters (older drafts: "model").
NET_CONFIG_KEYS: tuple[str, ...] = ("net", "model")


class BackendUnavailableError(RuntimeError):
    """The requested backend/device cannot run here (missing package, provider or GPU)."""


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, for provenance (which model produced a result)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_device(device: str) -> tuple[str, int]:
    """'cpu' | 'cuda' | 'cuda:N' → (kind, index)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return kind, int(index or 0)


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
        import onnxruntime as ort

        self.path = _existing(path, ONNX_SUFFIXES, "an ONNX model (.onnx)")
        self.device = device
        kind, index = _parse_device(device)
        available = ort.get_available_providers()
        if kind == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailableError(
                    "device=cuda needs onnxruntime-gpu: pip install '.[gpu]' "
                    f"(available providers: {', '.join(available)})"
                )
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]

        opts = session_options(threads)
        try:
            self._session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            if kind == "cuda":
                raise BackendUnavailableError(
                    f"onnxruntime-gpu is installed but CUDA failed to initialise: {err}"
                ) from err
            raise
        # onnxruntime silently falls back to CPU when the CUDA provider cannot load its libraries.
        if kind == "cuda" and "CUDAExecutionProvider" not in self._session.get_providers():
            raise BackendUnavailableError(
                "onnxruntime-gpu is installed but CUDA failed to initialise (check the NVIDIA driver and "
                "that the CUDA/cuDNN versions match onnxruntime-gpu; session providers: "
                f"{', '.join(self._session.get_providers())})"
            )
        custom = self._session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise MetadataError(
                f"{self.path} has no '{METADATA_KEY}' metadata: not a fracscope model file, or exported "
                "without metadata. Export it with `python -m fracscope.export`."
            )
        self.metadata = ModelMetadata.from_json(custom[METADATA_KEY])
        names_in = [i.name for i in self._session.get_inputs()]
        names_out = [o.name for o in self._session.get_outputs()]
        if names_in != [INPUT_NAME] or names_out != list(OUTPUT_NAMES):
            raise MetadataError(f"{self.path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, "
                                f"found {names_in} → {names_out}")

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


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint on CPU with ``weights_only=True`` (no unpickling).

    fracscope checkpoints keep plain-typed hyperparameters, so the safe loader suffices.

    Raises
    ------
    ValueError
        When the file is not a readable checkpoint.
    """
    import torch

    path = _existing(path, TORCH_SUFFIXES, "a Lightning checkpoint (.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError ...
        raise ValueError(f"{path} is not a readable fracscope checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def load_network_from_checkpoint(path: str | Path) -> tuple[Any, ModelMetadata]:
    """Rebuild the bare network (``x -> (class_logits, phase_logits)``) and its metadata.

    The architecture comes from the checkpoint's ``hyper_parameters["net"]`` (the
    :class:`fracscope.models.NetConfig` fields written by ``ParticleModule``), the weights from
    the ``net.`` entries of its ``state_dict``; no LightningModule is instantiated.

    Raises
    ------
    ValueError
        When the checkpoint lacks the network config or its weights do not fit.
    BackendUnavailableError
        When :mod:`fracscope.models` cannot be imported.
    """
    ckpt = load_checkpoint_dict(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    model_cfg = next((hparams[k] for k in NET_CONFIG_KEYS if isinstance(hparams.get(k), dict)), None)
    if model_cfg is None:
        raise ValueError(f"{path}: hyper_parameters has no network config (one of {NET_CONFIG_KEYS}); "
                         f"keys: {sorted(hparams)}")
    try:
        from fracscope.models import build_model
    except ImportError as err:
        raise BackendUnavailableError(f"cannot rebuild the network: fracscope.models failed to import ({err})") from err
    network = build_model({k: v for k, v in model_cfg.items() if k != "channels_last"})
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the network described by its hyperparameters: {err}") from err
    network.eval()
    return network, ModelMetadata.from_hparams(hparams)


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
        network, metadata = load_network_from_checkpoint(ckpt_path)
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

        kind, index = _parse_device(device)
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
        hint = ("export it first: python -m fracscope.export CKPT OUT.onnx" if backend == "onnx"
                else "the torch backend needs the training checkpoint (.ckpt), not an exported .onnx")
        raise ValueError(f"backend={backend!r} cannot load {path} ({kind} file); {hint}")
    if kind == "onnx":
        return OnnxBackend(path, device=device, threads=threads)
    return TorchBackend(path, device=device)
