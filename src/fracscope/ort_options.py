"""onnxruntime session options shared by the particle model and the learned detector."""

from __future__ import annotations

from typing import Any


def session_options(threads: int | None = None) -> Any:
    """Full graph optimisation, `threads` intra-op threads (None: all cores), and no spin-waiting.

    Idle onnxruntime threads spin by default. In a bulk run the model shares the cores with the
    detect worker process and the writer thread, and spinning threads take CPU from them:
    with spinning off the throughput benchmark went from 69-71 to 78-79 particles/s
    (docs/BENCHMARKS.md), while the model alone is within a few per cent either way.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts
