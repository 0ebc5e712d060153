"""onnxruntime session options shared by every model file (`model_file.open_onnx_session`)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

# x86 instructions that multiply uint8 by int8 into int32 without an int16 step.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def int8_kernels_exact(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether onnxruntime's fused int8 kernels give the quantized model's own results on this CPU.

    On x86 without VNNI (AVX2, AVX-512 before Cascade Lake, AMD before Zen 4) onnxruntime multiplies
    uint8 activations by int8 weights with VPMADDUBSW, whose int16 pair sums saturate: the shipped
    int8 detector and crop model then differ from their definition (crop model: 94 % instead of 99 %
    of phase pixels as the PyTorch network; the CT slice of data/real lost 8 of 113 sections).
    Non-x86 CPUs widen first. On x86 without a readable /proc/cpuinfo: not known, so False.
    """
    if (machine or platform.machine()).lower() not in X86_MACHINES:
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    # Every core repeats the same flags line: the first one says it.
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    return any(flag in flags for flag in VNNI_FLAGS)


def session_options(threads: int | None = None, int8_reference: bool = False) -> Any:
    """Full graph optimisation, `threads` intra-op threads (None: all cores), and no spin-waiting.

    Idle onnxruntime threads spin by default. In a bulk run the model shares the cores with the
    detect worker process and the writer thread, and spinning threads take CPU from them:
    with spinning off the throughput benchmark went from 69-71 to 78-79 particles/s
    (docs/BENCHMARKS.md), while the model alone is within a few per cent either way.

    `int8_reference`: run a quantized (QDQ) graph as float operations between its quantize and
    dequantize nodes instead of fused int8 kernels: the model's exact results where the fused kernels
    saturate (`int8_kernels_exact`), at ~1.4x the int8 time. Float models are unaffected.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if int8_reference:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts
