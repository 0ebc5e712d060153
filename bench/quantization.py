"""Throughput and agreement of ORT fp32 vs ORT int8 vs eager torch on the particle network.

Usage::

    python bench/quantization.py                          # untrained ParticleNet (speed only)
    python bench/quantization.py --checkpoint best.ckpt --crops val_crops.npy

Speed does not depend on the weights, so an untrained network gives representative images/s.
int8 agreement numbers only mean something on a trained checkpoint and real crops
(``--crops``: .npy (N, 2, S, S) or .npz with key ``crops``; the first half calibrates, the
second half is evaluated). On a shared 2-core machine timings are rough.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fracscope.crop import CropSpec
from fracscope.export import compare_outputs, export_onnx, load_calibration, parity_batch
from fracscope.model_file import ModelMetadata
from fracscope.runtime import Backend, OnnxBackend, TorchBackend


@dataclass
class Timing:
    backend: str
    batch_size: int
    images_per_s: float
    ms_per_image: float


def time_backend(name: str, backend: Backend, x: np.ndarray, batch_size: int, min_s: float) -> Timing:
    """Median-free simple timing: warm up once, then repeat whole passes for at least ``min_s``."""
    backend.predict_batched(x[:batch_size], batch_size)  # warm-up (allocations, kernel selection)
    n, t0 = 0, time.perf_counter()
    while True:
        backend.predict_batched(x, batch_size)
        n += len(x)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            break
    return Timing(name, batch_size, n / elapsed, 1e3 * elapsed / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--crops", type=Path, default=None)
    parser.add_argument("--crop-size", type=int, default=CropSpec.size)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n", type=int, default=32, help="crops per timing pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from fracscope.models.checkpoint import load_network

        network, metadata = load_network(args.checkpoint, ModelMetadata)
    else:
        from fracscope.models.unet import NetConfig, build_model

        torch.manual_seed(0)
        network = build_model(NetConfig(encoder=args.encoder)).eval()
        metadata = ModelMetadata(crop_size=args.crop_size, encoder=args.encoder, training_data="untrained (bench)")
    s = metadata.crop_size
    if args.crops:
        crops = load_calibration(args.crops)
        calib, evaluation = crops[: len(crops) // 2], crops[len(crops) // 2 :]
    else:
        calib = parity_batch(s, n_random=8, n_structured=56, seed=1)
        evaluation = parity_batch(s, n_random=8, n_structured=56, seed=2)
    x = np.resize(evaluation, (args.n, *evaluation.shape[1:])).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(network, Path(tmp) / "fp32.onnx", metadata)
        int8 = export_onnx(network, Path(tmp) / "int8.onnx", metadata, quantize=True, calibration=calib)
        backends = {
            "torch_eager_fp32": TorchBackend.from_network(network, metadata),
            "ort_fp32": OnnxBackend(fp32.path, threads=args.threads),
            "ort_int8": OnnxBackend(int8.path, threads=args.threads),
        }
        timings = [time_backend(k, b, x, args.batch_size, args.min_seconds) for k, b in backends.items()]
        reference = backends["ort_fp32"].predict_batched(evaluation, args.batch_size)
        agreement = compare_outputs(reference, backends["ort_int8"].predict_batched(evaluation, args.batch_size))
        result = {
            "crop_size": s,
            "encoder": metadata.encoder,
            "threads": args.threads,
            "weights": str(args.checkpoint) if args.checkpoint else "untrained",
            "eval_crops": "real" if args.crops else "generated structured",
            "size_mb": {"fp32": fp32.size_bytes / 1e6, "int8": int8.size_bytes / 1e6},
            "timings": [asdict(t) for t in timings],
            "int8_vs_fp32": agreement,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
