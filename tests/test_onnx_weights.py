"""Fine-tuning from a shipped ONNX file (issue 21): its weights back in the PyTorch network, BatchNorm unfolded."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from fracscope.assets import CONF_DIR
from fracscope.models.checkpoint import init_weights_from
from fracscope.models.onnx_weights import module_path
from fracscope.ort_options import int8_kernels_exact, session_options

pytestmark = pytest.mark.train
MODELS = CONF_DIR.parent / "models"


def _net(kind: str) -> torch.nn.Module:
    cfg = yaml.safe_load((CONF_DIR / "model" / f"{kind}.yaml").read_text())["net"]
    cfg.pop("channels_last", None)
    if kind == "phases":
        from fracscope.models.phase_net import build_phase_net

        return build_phase_net(cfg)
    if kind == "detector":
        from fracscope.models.detector_net import build_detector_net

        return build_detector_net(cfg)
    if kind == "sections":
        from fracscope.models.section_net import build_section_net

        return build_section_net(cfg)
    from fracscope.models.unet import build_model

    return build_model(cfg)


def _onnx(path, x):
    # As inference runs it: int8 graphs in their reference form where the fused kernels saturate.
    options = session_options(int8_reference=not int8_kernels_exact())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_module_paths_from_exported_node_names():
    assert module_path("/net/encoder/stages.1/stages.1.1/stages.1.1.0/conv1/Conv") == "encoder.stages.1.1.0.conv1"
    assert module_path("/net/full_res/full_res.0/Conv") == "full_res.0"
    assert module_path("Conv_12") is None


def test_the_fp32_phase_model_is_restored_exactly():
    net = _net("phases")
    report = init_weights_from(net, MODELS / "fracscope_phases.onnx")
    assert report.loaded > 100 and report.source.name == "fracscope_phases.onnx"
    x = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
    (probs,) = _onnx(MODELS / "fracscope_phases.onnx", x)
    with torch.no_grad():
        ours = torch.softmax(net.eval()(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(ours, probs, atol=1e-4)


def test_the_fp32_section_net_is_restored_exactly():
    net = _net("sections")
    report = init_weights_from(net, MODELS / "fracscope_sections.onnx")
    assert report.loaded >= 20 and not report.skipped
    x = np.random.default_rng(1).random((3, 4, 64, 64), dtype=np.float32)
    (probs,) = _onnx(MODELS / "fracscope_sections.onnx", x)
    with torch.no_grad():
        ours = torch.softmax(net.eval()(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(ours, probs, atol=1e-5)


def test_the_int8_crop_model_is_restored_up_to_its_rounding():
    net = _net("unet")
    init_weights_from(net, MODELS / "fracscope_default.onnx")
    rng = np.random.default_rng(1)
    x = rng.random((4, 2, 128, 128), dtype=np.float32)
    x[:, 1] = x[:, 1] > 0.3
    class_probs, phase_probs = _onnx(MODELS / "fracscope_default.onnx", x)
    with torch.no_grad():
        logits, phase_logits = net.eval()(torch.from_numpy(x))
    assert np.abs(torch.softmax(logits, 1).numpy() - class_probs).max() < 0.05
    assert (phase_logits.numpy().argmax(1) == phase_probs.argmax(1)).mean() > 0.97
    # A fresh network is far from it: the weights did come from the file.
    with torch.no_grad():
        fresh = _net("unet").eval()(torch.from_numpy(x))[1].numpy().argmax(1)
    assert (fresh == phase_probs.argmax(1)).mean() < 0.9


def test_another_architecture_is_one_clear_error():
    net = _net("detector")
    with pytest.raises(ValueError, match="init_from: .*not the same architecture"):
        init_weights_from(net, MODELS / "fracscope_phases.onnx")
