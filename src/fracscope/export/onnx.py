"""The one export path: wrap → torch.onnx.export → metadata → parity → optional int8 → atomic replace."""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import fracscope
from fracscope.export.quantise import quantize_int8
from fracscope.model_file import write_metadata

R = TypeVar("R")


@dataclass(frozen=True)
class Graph:
    """What the export path needs to know of a network kind's graph.

    dynamic_axes: axis index → name, the same for the input and every output.
    example_shape: the input shape traced at export.
    """

    input_name: str
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[int, str]
    example_shape: tuple[int, ...]


def prepare_for_export(network: Any) -> Any:
    """An fp32, eval-mode, contiguous-format CPU copy of ``network`` (the original is untouched)."""
    import torch

    net = copy.deepcopy(network).to(device="cpu", dtype=torch.float32)
    net = net.to(memory_format=torch.contiguous_format)  # channels_last-free export
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def probability_wrapper(network: Any) -> Any:
    """Wrap a (class_logits, phase_logits) network so it returns softmax probabilities."""
    import torch

    class _Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            class_logits, phase_logits = self.net(x)
            return torch.softmax(class_logits, dim=1), torch.softmax(phase_logits, dim=1)

    return _Probabilities(network).eval()


def stamped(metadata: Any, quantize: bool) -> Any:
    """`metadata` with this export's precision, fracscope version and date."""
    return dataclasses.replace(
        metadata,
        precision="int8" if quantize else "fp32",
        fracscope_version=fracscope.__version__,
        export_date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def torch_to_onnx(wrapper: Any, path: Path, graph: Graph, opset: int) -> None:
    """TorchScript-based ``torch.onnx.export`` with the graph's names and dynamic axes."""
    import torch

    axes = dict(graph.dynamic_axes)
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation on every call; dynamo=True was also seen
        # to work (same parity) but exports slower and noisier, so stay on the mature path.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (torch.zeros(*graph.example_shape, dtype=torch.float32),),
            str(path),
            input_names=[graph.input_name],
            output_names=list(graph.output_names),
            dynamic_axes={graph.input_name: axes, **{n: axes for n in graph.output_names}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_network(
    wrapper: Any,
    out_path: str | Path,
    metadata: Any,
    graph: Graph,
    parity: Callable[[Path, str], R],
    opset: int = 17,
    calibration: np.ndarray | None = None,
    calibration_batch: int = 8,
) -> R:
    """Export `wrapper` (eval mode, the graph's outputs) to `out_path` with `metadata`.

    The fp32 graph is built in a temp folder beside `out_path`, gets its metadata and must pass
    ``parity(path, "fp32")``; with `calibration` (``metadata.precision == "int8"``) it is then
    quantised to static int8 and ``parity(path, "int8")`` must pass too. Only then is the file
    moved to `out_path` (an atomic rename on the same file system): a file that fails parity
    never appears there.

    Returns
    -------
    What the last `parity` call returned (the export report).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize = metadata.precision == "int8"
    if quantize and calibration is None:
        raise ValueError("an int8 export needs calibration inputs")
    with tempfile.TemporaryDirectory(prefix=".fracscope_export_", dir=out_path.parent) as tmp:
        built = Path(tmp) / "fp32.onnx"
        torch_to_onnx(wrapper, built, graph, opset)
        write_metadata(built, metadata)
        report = parity(built, "fp32")
        if quantize:
            fp32, built = built, Path(tmp) / "int8.onnx"
            quantize_int8(fp32, built, calibration, Path(tmp), graph.input_name, calibration_batch)
            write_metadata(built, metadata)
            report = parity(built, "int8")
        os.replace(built, out_path)
    return report
