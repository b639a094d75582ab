"""ONNX Runtime CPU sessions with the thread plan's intra-op threads and no spinning, for every model-holding step.

ONNX Runtime's defaults are one intra-op thread per physical core and idle workers that spin. On a machine whose
cores are shared (the decode thread, other stages, other users), spinning workers burn the cores they wait for: on 2
loaded cores the NudeNet classifier ran at 10 photos/s with 2 spinning threads against 37 without spinning and 22
with its former single thread (benchmarks/bench_model_steps.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visprep.engines.threads import plan_threads


def model_threads(threads: int) -> int:
    """Return the intra-op thread count a model should use: `threads`, or the thread plan's (one per usable core
    of a single-process plan) when 0.

    Raises:
        ValueError: `threads` is negative or not an int.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"model threads must be an int >= 0 (0 = one per core), got {threads!r}")
    return plan_threads(model_threads=threads).model


def session_options(*, threads: int, spin: bool = False) -> Any:
    """Return `onnxruntime.SessionOptions` for a CPU session: `threads` intra-op threads (resolved by
    `model_threads`), one inter-op thread (sequential execution), all graph optimisations, and idle workers that
    sleep unless `spin`."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX models need onnxruntime: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = model_threads(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def cpu_session(path: str | Path, *, threads: int, spin: bool = False) -> Any:
    """Return an `onnxruntime.InferenceSession` of the ONNX file `path` on the CPU with `session_options`."""
    opts = session_options(threads=threads, spin=spin)  # first: its ImportError says what to install
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
