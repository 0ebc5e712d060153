"""One export path for every network: checkpoint → CLI → model file, classifier and detector, fp32 and int8."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from fracscope.crop import CropSpec
from fracscope.export import parity_batch
from fracscope.export.cli import main
from fracscope.model_file import DetectorMetadata, MetadataError, ModelMetadata, read_metadata
from fracscope.runtime import OnnxBackend, load_backend

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch, lightning)

SPEC = CropSpec(size=64, margin=0.2, low_pct=1.0, high_pct=99.0)


def _save(module: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    from fracscope.models import ParticleModule

    torch.manual_seed(0)
    config = {**SPEC.to_fields(), "pore_polarities": ["dark"], "training_data": "untrained (test)"}
    module = ParticleModule({"encoder": "resnet18", "in_channels": 2, "decoder_channels": [32, 16, 16, 8, 8]},
                            config=config)
    return _save(module, tmp_path_factory.mktemp("ckpt") / "classifier.ckpt")


@pytest.fixture(scope="module")
def detector_ckpt(tmp_path_factory) -> Path:
    from fracscope.models.detector_module import DetectorModule

    torch.manual_seed(0)
    module = DetectorModule({"encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8]},
                            config={"working_pixel_size_um": 0.2, "training_data": "untrained (test)"},
                            postprocess={"min_area_px": 12})
    return _save(module, tmp_path_factory.mktemp("ckpt") / "detector.ckpt")


@pytest.mark.slow
def test_classifier_checkpoint_to_fp32_and_int8_carries_the_crop_spec(classifier_ckpt, tmp_path, capsys):
    fp32, int8 = tmp_path / "c.onnx", tmp_path / "c_int8.onnx"
    assert main([str(classifier_ckpt), str(fp32), "--pore-weight", "1.3"]) == 0
    np.save(tmp_path / "crops.npy", parity_batch(64, n_random=2, n_structured=14, seed=3))
    assert main([str(classifier_ckpt), str(int8), "--int8", "--calibration", str(tmp_path / "crops.npy")]) == 0
    assert "sha256" in capsys.readouterr().out
    torch_meta = load_backend(classifier_ckpt).metadata
    for path, precision in ((fp32, "fp32"), (int8, "int8")):
        meta = read_metadata(path, ModelMetadata)
        assert meta.precision == precision and meta.crop_spec == SPEC == torch_meta.crop_spec
    assert read_metadata(fp32, ModelMetadata).pore_weight == 1.3
    x = parity_batch(64, n_random=1, n_structured=3, seed=5)
    np.testing.assert_allclose(load_backend(fp32).predict(x)[0], load_backend(classifier_ckpt).predict(x)[0], atol=1e-4)


@pytest.mark.slow
def test_detector_checkpoint_to_fp32_and_int8_through_the_same_cli(detector_ckpt, tmp_path, capsys):
    from fracscope.detect.learned import LearnedDetector

    fp32, int8 = tmp_path / "d.onnx", tmp_path / "d_int8.onnx"
    assert main([str(detector_ckpt), str(fp32), "--min-score", "0.5"]) == 0
    yy, xx = np.mgrid[:96, :96]
    tiles = np.stack([((yy - r) ** 2 + (xx - c) ** 2 < 30**2).astype(np.float32) for r, c in ((40, 40), (60, 50))])
    np.save(tmp_path / "tiles.npy", tiles[:, None])
    # An untrained detector's int8 graph need not agree on the foreground: the path must still run to
    # the check and say so, without leaving a file behind.
    try:
        main([str(detector_ckpt), str(int8), "--int8", "--calibration", str(tmp_path / "tiles.npy")])
    except RuntimeError as err:  # ExportParityError
        assert "foreground" in str(err) and not int8.exists()
    else:
        assert read_metadata(int8, DetectorMetadata).precision == "int8"
    assert "parity" in capsys.readouterr().out
    meta = read_metadata(fp32, DetectorMetadata)
    assert meta.precision == "fp32" and meta.working_pixel_size_um == 0.2
    assert meta.postprocess_params().min_score == 0.5 and meta.postprocess_params().min_area_px == 12
    assert LearnedDetector(fp32).params.min_score == 0.5
    with pytest.raises(MetadataError, match="no 'fracscope' metadata"):
        OnnxBackend(fp32)  # a detector file is not a classifier


def test_int8_detector_export_path_writes_an_int8_file(tmp_path):
    """The int8 branch of the one path, on a network whose int8 graph agrees (a fixed threshold)."""
    from fracscope.export import export_detector

    class Threshold(torch.nn.Module):
        def forward(self, x):
            return torch.cat([(x - 0.5) * 20, torch.sigmoid((x - 0.5) * 4)], dim=1)

    yy, xx = np.mgrid[:128, :128]
    tiles = np.stack([((yy - r) ** 2 + (xx - c) ** 2 < 40**2).astype(np.float32) for r, c in ((50, 60), (80, 70))])
    report = export_detector(Threshold(), tmp_path / "t.onnx", DetectorMetadata(), quantize=True,
                             calibration=tiles[:, None])
    assert report.precision == "int8" and report.foreground_agreement_pct >= 98.0 and len(report.sha256) == 64
    assert read_metadata(report.path, DetectorMetadata).precision == "int8"


def test_options_of_the_other_kind_are_usage_errors(classifier_ckpt, detector_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main([str(detector_ckpt), str(tmp_path / "x.onnx"), "--pore-weight", "1.2"])
    assert err.value.code == 2 and "pore_weight" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main([str(classifier_ckpt), str(tmp_path / "x.onnx"), "--min-score", "0.5"])
    assert err.value.code == 2
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit) as err:
        main([str(Path(__file__).resolve().parents[1] / "models" / "fracscope_detector.onnx"), "--pore-weight", "2"])
    assert err.value.code == 2
