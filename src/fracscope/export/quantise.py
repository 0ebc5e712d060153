"""Static int8 quantisation of an exported fp32 graph, and the calibration data it needs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class _BatchReader:
    """onnxruntime CalibrationDataReader over an array of inputs, in small batches."""

    def __init__(self, inputs: np.ndarray, batch_size: int, input_name: str) -> None:
        self._inputs = inputs
        self._batch_size = batch_size
        self._input_name = input_name
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(
            {self._input_name: np.ascontiguousarray(self._inputs[i : i + self._batch_size])}
            for i in range(0, len(self._inputs), self._batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, workdir: Path,
                  input_name: str, batch_size: int = 8) -> None:
    """Static QDQ int8: per-channel int8 weights, uint8 activations calibrated on ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_BatchReader, CalibrationDataReader):
        pass

    pre = workdir / "preprocessed.onnx"
    # Folds constants / fuses Conv+BN and infers shapes, which gives cleaner quantization.
    # Symbolic shape inference trips over Resize with a dynamic batch; ONNX shape inference suffices.
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out_path),
        calibration_data_reader=Reader(calibration, batch_size, input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # uint8 activations + int8 weights (U8S8) is onnxruntime's recommended CPU combination.
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def load_calibration(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Load calibration inputs saved as ``.npy`` (N, C, H, W) or ``.npz`` (key ``crops``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"calibration file not found: {path}")
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        if "crops" not in data:
            raise KeyError(f"{path}: .npz calibration file needs a 'crops' array, has {list(data.keys())}")
        data = data["crops"]
    data = np.asarray(data, dtype=np.float32)
    return data[:limit] if limit else data


def synthetic_calibration_tiles(working_pixel_size_um: float, n_tiles: int = 32, tile_px: int = 256,
                                seed: int = 4321, looks: Sequence[str] = ()) -> np.ndarray:
    """float32 (n_tiles, 1, tile_px, tile_px) normalised detector tiles at working scale.

    Random tiles of synthetic electrode fields of both presets from the training synth
    config at a seed training does not use (never the held-out config). With `looks`
    (generator looks, e.g. "infiltrated"), as many fields again per look are rendered in it,
    for a network trained on those looks; without, the tiles are those of earlier exports.
    """
    from fracscope.detect.learned import normalise_image, to_working_scale
    from fracscope.synth import load_config, make_field

    rng = np.random.default_rng(seed)
    tiles = []
    presets = ("gp", "p")
    field_looks = [[], *([f"imaging.looks=[{look}]"] for look in looks)]
    n_fields = 4 * len(field_looks)
    for k in range(n_fields):
        cfg = load_config(presets[k % 2], ["electrode.field_px=[1024,1024]", *field_looks[k // 4]])
        item = make_field(cfg, seed, k)
        work = normalise_image(to_working_scale(np.asarray(item.image.pixels),
                                                float(item.image.pixel_size_um) / working_pixel_size_um))
        h, w = work.shape
        side = min(tile_px, h, w) // 32 * 32
        for _ in range(-(-n_tiles // n_fields)):
            r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            tiles.append(work[r : r + side, c : c + side])
    side = min(t.shape[0] for t in tiles)
    return np.stack([t[:side, :side] for t in tiles[:n_tiles]])[:, None].astype(np.float32)
