"""Runtime backends: loading, errors that say what to do, batching, provenance hash."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest

from fracscope.export import export_onnx, parity_batch
from fracscope.model_file import BackendUnavailableError, sha256_of
from fracscope.runtime import OnnxBackend, TorchBackend, load_backend
from test_export import S, make_metadata, make_net

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("runtime") / "model.onnx"
    export_onnx(make_net(), path, make_metadata(), crop_size=S)
    return path


def test_load_backend_by_suffix_and_metadata(onnx_path):
    backend = load_backend(onnx_path)
    assert isinstance(backend, OnnxBackend) and backend.device == "cpu"
    assert backend.providers == ["CPUExecutionProvider"]
    assert backend.metadata.crop_size == S and backend.input_shape == (2, S, S)
    assert backend.sha256 == sha256_of(onnx_path) == hashlib.sha256(onnx_path.read_bytes()).hexdigest()


def test_session_options_do_not_spin_and_set_threads():
    from fracscope.ort_options import session_options

    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options().intra_op_num_threads == 0  # onnxruntime's default: all cores
    opts = session_options(3)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)


def test_load_backend_errors(onnx_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_backend(tmp_path / "missing.onnx")
    weird = tmp_path / "model.pkl"
    weird.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown model file kind"):
        load_backend(weird)
    with pytest.raises(ValueError, match="torch backend needs the training checkpoint"):
        load_backend(onnx_path, backend="torch")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match="export it first"):
        load_backend(ckpt, backend="onnx")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_backend(onnx_path, backend="tensorrt")
    with pytest.raises(ValueError, match="device must be"):
        load_backend(onnx_path, device="gpu")


def test_cuda_without_gpu_provider_says_how_to_fix(onnx_path, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match=r"needs onnxruntime-gpu: pip install '\.\[gpu\]'") as err:
        OnnxBackend(onnx_path, device="cuda")
    assert "CPUExecutionProvider" in str(err.value)


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_cuda_provider_present_but_not_initialising_is_reported(onnx_path, monkeypatch):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a real CUDA provider is installed here")
    # Pretend onnxruntime-gpu is installed: the session then falls back to CPU, which must not pass silently.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="installed but CUDA failed to initialise"):
        OnnxBackend(onnx_path, device="cuda")


def test_predict_validates_shape_and_handles_empty_batches(onnx_path):
    backend = OnnxBackend(onnx_path, threads=1)
    with pytest.raises(ValueError, match=r"crops must have shape \(N, 2, 32, 32\)"):
        backend.predict(np.zeros((1, 1, S, S), np.float32))
    c, p = backend.predict(np.zeros((0, 2, S, S), np.float32))
    assert c.shape == (0, 3) and p.shape == (0, 4, S, S)
    c, p = backend.predict_batched(np.zeros((0, 2, S, S)), batch_size=4)
    assert c.shape == (0, 3)
    with pytest.raises(ValueError, match="batch_size"):
        backend.predict_batched(np.zeros((1, 2, S, S)), batch_size=0)
    # float64 input is accepted and cast
    c, _ = backend.predict(parity_batch(S, n_random=1, n_structured=1).astype(np.float64))
    assert c.dtype == np.float32 and c.shape == (2, 3)


def test_torch_and_onnx_backends_agree_batched(onnx_path):
    x = parity_batch(S, n_random=2, n_structured=5, seed=5)
    onnx_backend = OnnxBackend(onnx_path)
    torch_backend = TorchBackend.from_network(make_net(), onnx_backend.metadata)
    assert torch_backend.sha256 is None
    oc, op = onnx_backend.predict_batched(x, batch_size=3)
    tc, tp = torch_backend.predict_batched(x, batch_size=4)
    np.testing.assert_allclose(oc, tc, atol=1e-4)
    np.testing.assert_allclose(op, tp, atol=1e-4)


def test_torch_backend_cuda_without_gpu_is_clear():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError, match="torch sees no CUDA device"):
        TorchBackend.from_network(make_net(), make_metadata(), device="cuda")


# ---------------------------------------------------------------- the real network, via a checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import lightning as L
    from fracscope import models
    import torch

    torch.manual_seed(0)
    config = {
        "crop_size": 64, "margin": 0.2, "normalisation": {"method": "percentile", "low_pct": 0.5, "high_pct": 99.5},
        "pore_polarities": ["dark"], "pixel_size_range_um": [0.02, 0.06], "synth_version": "1",
        "training_data": "generated (test)",
    }
    module = models.ParticleModule({"encoder": "resnet18", "in_channels": 2}, config=config)
    module.best_metrics = {"val/macro_f1": 0.5}
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ckpt") / "particle.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_torch_and_onnx_backends_agree_on_a_checkpoint(checkpoint, tmp_path):
    from fracscope.export import export_checkpoint

    report = export_checkpoint(checkpoint, tmp_path / "particle.onnx")
    assert report.max_prob_diff <= 1e-4
    torch_backend = load_backend(checkpoint, backend="torch")
    onnx_backend = load_backend(report.path, backend="onnx")
    assert isinstance(torch_backend, TorchBackend) and torch_backend.sha256 == sha256_of(checkpoint)
    tm, om = torch_backend.metadata, onnx_backend.metadata
    assert (om.crop_size, om.margin, om.encoder, om.pore_polarities) == (64, 0.2, "resnet18", ("dark",))
    assert om.pixel_size_range_um == (0.02, 0.06) and om.metrics == {"val/macro_f1": 0.5}
    assert (tm.normalisation, tm.synth_version, tm.training_data) == (om.normalisation, om.synth_version,
                                                                      om.training_data)
    x = parity_batch(64, n_random=1, n_structured=4, seed=8)
    tc, tp = torch_backend.predict_batched(x, batch_size=2)
    oc, op = onnx_backend.predict(x)
    np.testing.assert_allclose(tc, oc, atol=1e-4)
    np.testing.assert_allclose(tp, op, atol=1e-4)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable fracscope checkpoint"):
        load_backend(bad)


@pytest.mark.slow
def test_export_cli_int8_with_calibration_file(checkpoint, tmp_path, capsys):
    from fracscope.export.cli import main

    crops = parity_batch(64, n_random=2, n_structured=14, seed=21)
    np.save(tmp_path / "crops.npy", crops)
    out = tmp_path / "particle_int8.onnx"
    assert main([str(checkpoint), str(out), "--int8", "--calibration", str(tmp_path / "crops.npy")]) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "sha256" in printed
    backend = load_backend(out)
    assert backend.metadata.precision == "int8"
    assert backend.metadata.extra["calibration"] == "16 crops supplied at export"
    c, p = backend.predict(crops[:2])
    assert c.shape == (2, 3) and p.shape == (2, 4, 64, 64)
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".fracscope_export_")] == []  # temp dir cleaned
