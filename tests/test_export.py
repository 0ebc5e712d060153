"""ONNX export: metadata round trip, fp32 parity (and that the check can fail), dynamic batch, int8."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fracscope.export import ExportParityError, ParityTolerance, export_onnx, parity_batch
from fracscope.model_file import MetadataError, ModelMetadata, read_metadata
from fracscope.runtime import OnnxBackend, TorchBackend

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch)

S = 32  # small crops keep the suite fast; the I/O contract is size-independent


class StandInNet(nn.Module):
    """Same I/O contract as the real network: (N, 2, S, S) → ((N, 3), (N, 4, S, S))."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
                                  nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), nn.ReLU())
        self.phase_head = nn.Conv2d(width, 4, 1)
        self.class_head = nn.Linear(2 * width, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        class_logits = self.class_head(f2.mean(dim=(2, 3)))
        phase_logits = self.phase_head(self.dec(torch.cat([f1, self.up(f2)], dim=1)))
        return class_logits, phase_logits


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = StandInNet()
    # Non-trivial BatchNorm statistics, so eval-mode export is actually exercised.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def make_metadata(**overrides) -> ModelMetadata:
    base = ModelMetadata(
        crop_size=S,
        margin=0.15,
        normalisation={"method": "percentile", "low_pct": 1.0, "high_pct": 99.0},
        encoder="standin",
        pixel_size_range_um=(0.01, 0.05),
        pore_polarities=("dark", "bright"),
        synth_version="1",
        training_data="synthetic crops, seed 0",
        metrics={"val_macro_f1": 0.9, "val_phase_miou": 0.7},
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    net = make_net()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    report = export_onnx(net, path, make_metadata(), crop_size=S)
    return net, path, report


# ---------------------------------------------------------------- metadata


def test_metadata_json_round_trip():
    meta = make_metadata()
    again = ModelMetadata.from_json(meta.to_json())
    assert again == meta
    assert again.pixel_size_range_um == (0.01, 0.05)
    assert again.class_names == ("intact", "mildly_damaged", "broken")
    as_dict = meta.to_dict()
    assert as_dict["pore_polarities"] == ["dark", "bright"] and as_dict["crop_size"] == S
    assert ModelMetadata.from_json(json.dumps(as_dict)) == meta


def test_metadata_unknown_keys_kept_in_extra_and_validation_errors():
    raw = json.loads(make_metadata().to_json())
    raw["future_field"] = 3
    assert ModelMetadata.from_json(json.dumps(raw)).extra["future_field"] == 3
    with pytest.raises(MetadataError, match="precision"):
        make_metadata(precision="fp8")
    with pytest.raises(MetadataError, match="pixel_size_range_um"):
        make_metadata(pixel_size_range_um=(0.05, 0.01))
    with pytest.raises(MetadataError, match="not valid JSON"):
        ModelMetadata.from_json("{broken")


def test_pore_weight_round_trips_defaults_to_one_and_is_validated(fp32_export, tmp_path):
    import shutil

    from fracscope.export.cli import main as export_main

    assert make_metadata().pore_weight == 1.0
    raw = json.loads(make_metadata().to_json())
    del raw["pore_weight"]  # files exported before the field existed
    assert ModelMetadata.from_json(json.dumps(raw)).pore_weight == 1.0
    with pytest.raises(MetadataError, match="pore_weight"):
        make_metadata(pore_weight=0.0)
    path = tmp_path / "m.onnx"
    shutil.copy(fp32_export[1], path)
    before = read_metadata(path)
    assert export_main([str(path), "--pore-weight", "1.25"]) == 0
    after = read_metadata(path)
    assert after.pore_weight == 1.25 and dataclasses.replace(after, pore_weight=before.pore_weight) == before
    with pytest.raises(SystemExit):
        export_main([str(path)])  # an .onnx input needs --pore-weight


def test_metadata_from_nested_particle_module_hparams():
    # The layout ParticleModule saves: {"net": NetConfig fields, "config": facts for export, ...}.
    hp = {
        "net": {"encoder": "resnet34", "in_channels": 2, "decoder_channels": [32, 16, 16, 8, 8], "channels_last": True},
        "loss": {"class_weight": 1.0},
        "config": {
            "crop_size": 64, "margin": 0.15, "normalisation": {"method": "percentile", "low_pct": 0.5,
                                                               "high_pct": 99.5},
            "pixel_size_range_um": [0.04, 0.15],
            "crop_pixel_size_range_um": [0.2, 0.27], "pore_polarities": ["dark", "bright"],
            "synth_version": "0.1.0", "training_data": "synthetic", "split_seed": 3,
            "augment": {"rotate_p": 0.5}, "best_metrics": {"val/macro_f1": 0.75, "epoch": 4.0},
        },
        "class_weights": [1.0, 1.0, 1.0],
    }
    meta = ModelMetadata.from_hparams(hp)
    assert (meta.encoder, meta.crop_size, meta.in_channels) == ("resnet34", 64, 2)
    assert meta.crop_pixel_size_range_um == (0.2, 0.27) and meta.pixel_size_range_um == (0.04, 0.15)
    assert meta.metrics["val/macro_f1"] == 0.75
    assert meta.extra == {"split_seed": 3, "augment": {"rotate_p": 0.5}}  # provenance kept, loss not
    assert ModelMetadata.from_json(meta.to_json()) == meta


def test_onnx_file_carries_metadata(fp32_export):
    _, path, report = fp32_export
    meta = read_metadata(path)
    assert meta.precision == "fp32" and meta.crop_size == S
    assert meta.export_date and meta.fracscope_version
    assert meta.pore_polarities == ("dark", "bright")
    assert meta == report.metadata


def test_model_without_fracscope_metadata_is_rejected(fp32_export, tmp_path):
    _, path, _ = fp32_export
    model = onnx.load(str(path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(MetadataError, match="no 'fracscope' metadata"):
        read_metadata(bare)
    with pytest.raises(MetadataError, match="no 'fracscope' metadata"):
        OnnxBackend(bare)


# ---------------------------------------------------------------- parity


def test_fp32_parity_within_tolerance(fp32_export):
    _, path, report = fp32_export
    assert report.max_prob_diff <= 1e-4
    assert report.class_argmax_agreement_pct == 100.0
    assert report.phase_argmax_agreement_pct > 99.9
    assert report.size_bytes == path.stat().st_size and len(report.sha256) == 64


def test_parity_check_can_fail(tmp_path):
    # float32 ORT vs torch can never agree to 1e-12: the check must raise, not pass silently.
    with pytest.raises(ExportParityError, match="max") as err:
        export_onnx(make_net(), tmp_path / "m.onnx", make_metadata(), crop_size=S,
                    tolerance=ParityTolerance(max_prob_diff=1e-12))
    assert 1e-12 < err.value.report.max_prob_diff <= 1e-4  # the measured diff travels with the error
    assert list(tmp_path.iterdir()) == []  # a model that failed parity is not left behind


def test_parity_check_catches_a_wrong_graph(tmp_path, monkeypatch):
    # Export a different network than the one compared against: the default fp32 check must fire.
    import fracscope.export.onnx as ex

    real_export = ex.torch_to_onnx
    monkeypatch.setattr(ex, "torch_to_onnx",
                        lambda net, path, graph, opset: real_export(ex.probability_wrapper(make_net(seed=1)),
                                                                    path, graph, opset))
    with pytest.raises(ExportParityError, match="max") as err:
        export_onnx(make_net(), tmp_path / "m.onnx", make_metadata(), crop_size=S)
    assert err.value.report.max_prob_diff > 1e-3
    assert err.value.report.phase_argmax_agreement_pct < 99.0


def test_graph_outputs_probabilities_with_dynamic_batch(fp32_export):
    net, path, _ = fp32_export
    model = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 2, S, S]
    backend = OnnxBackend(path)
    x = parity_batch(S, n_random=3, n_structured=4, seed=3)
    full_c, full_p = backend.predict(x)
    assert full_c.shape == (7, 3) and full_p.shape == (7, 4, S, S)
    np.testing.assert_allclose(full_c.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(full_p.sum(1), 1.0, atol=1e-5)
    for n in (1, 3, 7):  # per-sample results do not depend on the batch they ran in
        c, p = backend.predict(x[:n])
        np.testing.assert_allclose(c, full_c[:n], atol=1e-5)
        np.testing.assert_allclose(p, full_p[:n], atol=1e-5)
    c, p = backend.predict_batched(x, batch_size=2)
    np.testing.assert_allclose(p, full_p, atol=1e-5)
    # and they match eager torch on the same network
    tc, tp = TorchBackend.from_network(net, backend.metadata).predict(x)
    np.testing.assert_allclose(tc, full_c, atol=1e-4)
    np.testing.assert_allclose(tp, full_p, atol=1e-4)


def test_export_does_not_modify_the_network(tmp_path):
    net = make_net().train().to(memory_format=torch.channels_last)
    export_onnx(net, tmp_path / "m.onnx", make_metadata(), crop_size=S)
    assert net.training  # export works on a copy
    assert next(net.parameters()).requires_grad


# ---------------------------------------------------------------- int8


def test_int8_export_agrees_on_argmax(tmp_path):
    net = make_net()
    calibration = parity_batch(S, n_random=4, n_structured=28, seed=11)
    report = export_onnx(net, tmp_path / "m_int8.onnx", make_metadata(), crop_size=S, quantize=True,
                         calibration=calibration)
    model = onnx.load(str(report.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really QDQ-quantized
    meta = read_metadata(report.path)
    assert meta.precision == "int8" and "32 crops" in meta.extra["calibration"]
    assert report.phase_argmax_agreement_pct >= 90.0
    assert report.class_argmax_agreement_pct >= 60.0
    assert report.max_prob_diff < 0.5
    # structured crops (held out from calibration): int8 backend agrees with eager torch on most pixels
    x = parity_batch(S, n_random=0, n_structured=8, seed=99)
    _, p8 = OnnxBackend(report.path).predict(x)
    _, p32 = TorchBackend.from_network(net, meta).predict(x)
    assert np.mean(p8.argmax(1) == p32.argmax(1)) > 0.9


def test_int8_calibration_shape_is_checked(tmp_path):
    with pytest.raises(ValueError, match="calibration must be"):
        export_onnx(make_net(), tmp_path / "m.onnx", make_metadata(), crop_size=S, quantize=True,
                    calibration=np.zeros((4, 2, S + 1, S + 1), np.float32))


def test_detector_calibration_tiles_add_fields_in_the_asked_looks(monkeypatch):
    from types import SimpleNamespace

    import fracscope.synth as synth
    from fracscope.export.quantise import synthetic_calibration_tiles

    rendered = []

    def fake_field(cfg, seed, index):  # records the look of each field instead of rendering it
        rendered.append((cfg.electrode.field_px, tuple(cfg.imaging.looks)))
        return SimpleNamespace(image=SimpleNamespace(pixels=np.full((64, 64), index, np.uint8), pixel_size_um=0.15))

    monkeypatch.setattr(synth, "make_field", fake_field)
    plain = synthetic_calibration_tiles(0.15, n_tiles=8, tile_px=32)
    assert [looks for _, looks in rendered] == [()] * 4 and plain.shape == (8, 1, 32, 32)
    rendered.clear()
    mixed = synthetic_calibration_tiles(0.15, n_tiles=8, tile_px=32, looks=("infiltrated",))
    assert [looks for _, looks in rendered] == [()] * 4 + [("infiltrated",)] * 4
    assert mixed.shape == (8, 1, 32, 32)
