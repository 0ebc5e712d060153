"""The model-file contract (`fracscope.model_file`) and the one crop spec (`fracscope.crop.CropSpec`)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fracscope.crop import CropSpec, crop_particles
from fracscope.model_file import (
    BackendUnavailableError,
    DetectorMetadata,
    MetadataError,
    ModelMetadata,
    read_metadata,
    write_metadata,
)

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def test_model_file_imports_without_torch_or_onnxruntime():
    code = ("import sys, fracscope.model_file; "
            "assert not {'torch', 'onnxruntime'} & set(sys.modules), sorted({'torch', 'onnxruntime'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(SRC), "PATH": ""})


def test_shipped_models_load_and_carry_their_crop_spec():
    meta = read_metadata(REPO / "models" / "fracscope_default.onnx", ModelMetadata)
    assert meta.crop_spec == CropSpec(size=128, margin=0.15, low_pct=0.5, high_pct=99.5)
    detector = read_metadata(REPO / "models" / "fracscope_detector.onnx", DetectorMetadata)
    assert detector.percentiles == (0.5, 99.5) and detector.working_pixel_size_um > 0
    # Each kind's key: a file of one kind is refused where the other is expected.
    with pytest.raises(MetadataError, match="no 'fracscope_detector' metadata"):
        read_metadata(REPO / "models" / "fracscope_default.onnx", DetectorMetadata)
    with pytest.raises(MetadataError, match="no 'fracscope' metadata"):
        read_metadata(REPO / "models" / "fracscope_detector.onnx", ModelMetadata)


def test_crop_spec_round_trips_through_the_stored_fields():
    spec = CropSpec(size=96, margin=0.2, low_pct=1.0, high_pct=98.0)
    fields = spec.to_fields()
    assert set(fields) == {"crop_size", "margin", "normalisation"}
    assert CropSpec.from_fields(**fields) == spec
    assert ModelMetadata(**fields).crop_spec == spec
    with pytest.raises(ValueError, match="normalisation method"):
        CropSpec.from_fields(96, 0.2, {"method": "zscore"})
    with pytest.raises(MetadataError, match="crop spec"):
        ModelMetadata(normalisation={"method": "zscore"})
    with pytest.raises(ValueError, match="low_pct < high_pct"):
        CropSpec(low_pct=99.0, high_pct=1.0)


def test_from_hparams_reads_what_the_training_code_writes():
    spec = CropSpec(size=64, margin=0.25, low_pct=2.0, high_pct=97.0)
    hp = {
        "net": {"encoder": "resnet34", "in_channels": 2, "channels_last": True},
        "config": {**spec.to_fields(), "pore_polarities": ["dark"], "best_metrics": {"val/macro_f1": 0.7, "note": "x"},
                   "split_seed": 1},
    }
    meta = ModelMetadata.from_hparams(hp)
    assert meta.crop_spec == spec and meta.encoder == "resnet34" and meta.metrics == {"val/macro_f1": 0.7}
    assert meta.extra == {"split_seed": 1}
    # One spelling per field: an older alias is not read as the field (it stays provenance).
    old = ModelMetadata.from_hparams({"net": {}, "config": {"crop_margin": 0.3}})
    assert old.margin == CropSpec().margin and old.extra == {"crop_margin": 0.3}


def test_detector_metadata_errors_are_metadata_errors():
    with pytest.raises(MetadataError, match="unknown key 'no_such_setting' in the detector file's postprocess"):
        DetectorMetadata(postprocess={"no_such_setting": 1})
    with pytest.raises(MetadataError, match="not valid JSON"):
        DetectorMetadata.from_json("{")


def test_one_onnx_session_opener_checks_cuda_for_every_model(monkeypatch):
    from fracscope.detect.learned import LearnedDetector
    from fracscope.runtime import OnnxBackend

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        LearnedDetector(REPO / "models" / "fracscope_detector.onnx", device="cuda")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        OnnxBackend(REPO / "models" / "fracscope_default.onnx", device="cuda")


def _with_normalisation(src: Path, dest: Path, low_pct: float, high_pct: float) -> Path:
    shutil.copy(src, dest)
    meta = read_metadata(dest, ModelMetadata)
    write_metadata(dest, dataclasses.replace(meta, normalisation={**meta.normalisation, "low_pct": low_pct,
                                                                  "high_pct": high_pct}))
    return dest


def test_the_stored_normalisation_is_the_one_applied_at_inference(random_onnx_model, tmp_path, monkeypatch):
    """Same weights, another normalisation in the file: other crops, other predictions (infer and evaluate)."""
    from fracscope import evaluate
    from fracscope.data.datamodule import crops_from_items
    from fracscope.detect import build_detector
    from fracscope.locate import locate_particles
    from fracscope.runtime import load_backend
    from fracscope.types import AnnotatedImage, ParticleAnnotation, SEMImage

    rr, cc = np.ogrid[:240, :240]
    inst = np.zeros((240, 240), np.uint32)
    inst[(rr - 120) ** 2 + (cc - 120) ** 2 <= 70**2] = 1
    rng = np.random.default_rng(0)
    pixels = np.where(inst > 0, 170, 50) + rng.normal(0, 25, inst.shape)
    pixels[(inst > 0) & (rr % 9 == 0) & (cc % 9 == 0)] = 5  # small dark pores
    image = SEMImage(np.clip(pixels, 0, 255).astype(np.uint8), 0.05, "constructed")

    other = _with_normalisation(random_onnx_model, tmp_path / "other.onnx", 20.0, 80.0)
    a, b = load_backend(random_onnx_model), load_backend(other)
    assert b.metadata.crop_spec == dataclasses.replace(a.metadata.crop_spec, low_pct=20.0, high_pct=80.0)

    detector = build_detector({"name": "classical"})
    crops_a = locate_particles(image, detector, a.metadata.crop_spec).crops
    crops_b = locate_particles(image, detector, b.metadata.crop_spec).crops
    assert len(crops_a) == len(crops_b) >= 1
    assert not np.allclose(crops_a[0].image, crops_b[0].image)
    np.testing.assert_array_equal(crops_a[0].image, crop_particles(image.pixels, detector.detect(image),
                                                                   a.metadata.crop_spec)[0].image)

    x_a = np.stack([np.stack([c.image, c.mask]) for c in crops_a]).astype(np.float32)
    x_b = np.stack([np.stack([c.image, c.mask]) for c in crops_b]).astype(np.float32)
    assert not np.allclose(a.predict(x_a)[1], b.predict(x_b)[1], atol=1e-4)  # other phase probabilities

    # evaluate crops with the spec of the file it is given, too.
    seen = []

    def spy(items, spec, *args, **kwargs):
        seen.append(spec)
        return crops_from_items(items, spec, *args, **kwargs)

    monkeypatch.setattr(evaluate, "crops_from_items", spy)
    item = AnnotatedImage(image, "constructed", inst, None, [ParticleAnnotation(1, "intact", {})])
    evaluate.evaluate_items([item], other)
    assert seen == [b.metadata.crop_spec]
