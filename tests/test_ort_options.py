"""onnxruntime session options: int8 graphs in their reference form where fused int8 kernels saturate."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fracscope.assets import CONF_DIR
from fracscope.model_file import DetectorMetadata, open_onnx_session
from fracscope.ort_options import int8_kernels_exact, session_options

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n"


def test_vnni_decides_on_x86_and_other_cpus_are_exact():
    assert not int8_kernels_exact(AVX2, "x86_64")  # AVX-512 without VNNI saturates too
    assert int8_kernels_exact(AVX2.replace("avx512bw", "avx512bw avx512_vnni"), "x86_64")
    assert int8_kernels_exact(AVX2.replace("fma", "fma avx_vnni"), "AMD64")
    assert not int8_kernels_exact("", "AMD64")  # no flags readable: not known
    assert int8_kernels_exact("", "aarch64")


def test_the_reference_form_is_an_option_of_the_session():
    assert session_options(int8_reference=True).get_session_config_entry("session.disable_quant_qdq") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        session_options().get_session_config_entry("session.disable_quant_qdq")


def test_the_shipped_int8_detector_gives_its_reference_results_on_this_cpu():
    path = CONF_DIR.parent / "models" / "fracscope_detector.onnx"
    session, _ = open_onnx_session(path, DetectorMetadata)
    reference = ort.InferenceSession(str(path), session_options(int8_reference=True), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
    name = session.get_inputs()[0].name
    ours, ref = session.run(None, {name: x}), reference.run(None, {name: x})
    # Fused kernels on a VNNI CPU round a little differently; saturating ones (AVX2) were off by
    # 0.0014 and 0.019 on average (0.87 and 0.23 at most).
    for a, b in zip(ours, ref):
        assert np.abs(a - b).mean() < 0.006
