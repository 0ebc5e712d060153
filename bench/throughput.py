"""End-to-end bulk-inference throughput on wide fields holding 2,042 particles at ~50 nm/px.

    python bench/throughput.py [--particles 2042] [--model models/fracscope_default.onnx]

1. Generates the synthetic wide fields once (cached in --workdir) and writes them as TIFFs.
2. Runs `python infer.py` on them in a fresh process and reads its timings.json: particles/s,
   seconds per stage (decode, detect, crop, model, measure, write) and peak memory (max RSS).
3. Times the model stage alone on the same crops: onnxruntime (the model file) against PyTorch
   eager on the same architecture (fresh weights: speed does not depend on weight values).
4. Puts the model stage against the machine's compute limit: FLOPs per particle × particles/s
   over a measured onnxruntime fp32 MatMul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_fields(out: Path, n_particles: int) -> int:
    from fracscope.io import write_image_tiff
    from fracscope.synth import generate_electrode, load_config

    done = out / "DONE"
    if done.is_file():
        return int(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("gp", overrides=["electrode.pixel_size_um=0.05", "electrode.field_px=[1536,2048]"])
    n = 0
    for i, item in enumerate(generate_electrode(cfg, n_particles, seed=7, workers=2)):
        write_image_tiff(out / f"field{i:03d}.tif", item.image.pixels, item.image.pixel_size_um, compression="zlib")
        n += len(item.particles)
    done.write_text(str(n))
    return n


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    """Measured onnxruntime fp32 MatMul GFLOP/s (2·n³ per product), best of `repeats`."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    sess.run(None, {"a": a, "b": a})
    best = min(_timed(lambda: sess.run(None, {"a": a, "b": a})) for _ in range(repeats))
    del onnx
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_stage(model_path: str, fields: Path, batch: int) -> dict:
    """Images/s of the model file (ORT) and of PyTorch eager on the same crops and architecture."""
    import torch

    from fracscope.crop import crop_particles
    from fracscope.detect import ClassicalDetector
    from fracscope.io import read_image_pages
    from fracscope.models import NetConfig, build_model
    from fracscope.runtime import OnnxBackend, TorchBackend

    onnx_backend = OnnxBackend(model_path)
    meta = onnx_backend.metadata
    crops = []
    for path in sorted(fields.glob("*.tif"))[:3]:
        image = read_image_pages(path)[0]
        labels = ClassicalDetector().detect(image)
        crops += crop_particles(image.pixels, labels, meta.crop_spec)
    x = np.stack([np.stack([c.image, c.mask]) for c in crops]).astype(np.float32)[: 4 * batch]
    onnx_backend.predict_batched(x[:batch], batch)
    t_onnx = min(_timed(lambda: onnx_backend.predict_batched(x, batch)) for _ in range(3))

    net_cfg = NetConfig(encoder=meta.encoder, **meta.extra.get("net", {})) if "net" in meta.extra else NetConfig(
        encoder=meta.encoder)
    net = build_model(net_cfg).eval()
    torch_backend = TorchBackend.from_network(net, meta, "cpu")
    torch_backend.predict_batched(x[:batch], batch)
    t_torch = min(_timed(lambda: torch_backend.predict_batched(x, batch)) for _ in range(3))

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.from_numpy(x[:1]))
    return {
        "n_crops": len(x),
        "onnx_img_s": len(x) / t_onnx,
        "torch_img_s": len(x) / t_torch,
        "flops_per_particle": counter.get_total_flops(),
        "precision": meta.precision,
        "crop_size": meta.crop_size,
        "encoder": meta.encoder,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--particles", type=int, default=2042)
    ap.add_argument("--model", default=str(REPO / "models" / "fracscope_default.onnx"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--detect", default=None, help="infer.py detector (learned | classical); default: infer.py's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra infer.py override")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "fracscope_throughput"))
    args = ap.parse_args()

    work = Path(args.workdir)
    t0 = time.perf_counter()
    n_true = make_fields(work / "fields", args.particles)
    print(f"fields: {len(list((work / 'fields').glob('*.tif')))} images, {n_true} true particles "
          f"(prepared in {time.perf_counter() - t0:.0f} s, cached in {work})")

    out = work / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, str(REPO / "infer.py"), f"input={work / 'fields'}", f"output={out}",
           f"model_path={args.model}", f"batch_size={args.batch_size}"]
    if args.detect:
        cmd.append(f"detect={args.detect}")
    cmd += args.set
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    wall_process = time.perf_counter() - t0
    timings = json.loads((out / "timings.json").read_text())

    stage = model_stage(args.model, work / "fields", args.batch_size)
    peak = matmul_peak_gflops()
    model_s = timings["stage_s"]["model"]
    model_pps = timings["n_particles"] / max(model_s, 1e-9)
    share = stage["flops_per_particle"] * model_pps / (peak * 1e9)

    print(f"\nend to end: {timings['n_particles']} particles in {timings['wall_s']:.1f} s "
          f"= {timings['particles_per_s']:.1f} particles/s (process incl. start-up: {wall_process:.1f} s)")
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings["stage_s"].items()))
    print(f"peak memory (max RSS): infer process {timings['peak_rss_mb']:.0f} MB + largest detect worker "
          f"{timings['peak_rss_children_mb']:.0f} MB = at most {timings['peak_rss_mb'] + timings['peak_rss_children_mb']:.0f} MB")
    print(f"model stage alone ({stage['encoder']}, {stage['crop_size']} px, {stage['precision']}, "
          f"{stage['n_crops']} crops, batch {args.batch_size}): onnxruntime {stage['onnx_img_s']:.1f} img/s, "
          f"PyTorch eager fp32 {stage['torch_img_s']:.1f} img/s -> {stage['onnx_img_s'] / stage['torch_img_s']:.2f}x")
    print(f"compute: {stage['flops_per_particle'] / 1e9:.2f} GFLOP per particle (fp32 count); measured ORT fp32 "
          f"MatMul peak {peak:.0f} GFLOP/s; model stage in the run {model_pps:.1f} particles/s "
          f"= {100 * share:.0f} % of that peak"
          + (" (int8 arithmetic is not bound by the fp32 peak)" if stage["precision"] == "int8" else ""))
    print("reproduce: python bench/throughput.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
