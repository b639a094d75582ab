"""One place that decides how many threads each library may start, so a stage never oversubscribes the cores.

torch, ONNX Runtime, OpenCV and BLAS each default to one thread per core; a process that decodes in one thread
while a model runs in another, or a pool of worker processes, would otherwise run cores x (libraries + workers)
threads on `cores` cores. The plan is recorded in the stage's run record (`metrics["threads"]`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

from visprep.engines.local import resolve_workers


@dataclass(frozen=True)
class ThreadPlan:
    """Threads per process: `model` intra-op threads (torch and ONNX Runtime), `decode` threads running beside the
    model (read-ahead of decoded batches), `opencv` threads inside OpenCV calls; `workers` processes in all."""

    cores: int
    workers: int
    model: int
    decode: int
    opencv: int

    def as_dict(self) -> dict[str, Any]:
        """The plan as a plain dict (for run records)."""
        return asdict(self)


def plan_threads(*, workers: int = 1, model_threads: int = 0, decode_threads: int = 1) -> ThreadPlan:
    """Split the usable cores: each of `workers` processes gets cores / workers model threads (or
    `model_threads` when set), `decode_threads` read-ahead threads, and single-threaded OpenCV (its parallelism
    would compete with the model's)."""
    if workers < 1 or model_threads < 0 or decode_threads < 0:
        raise ValueError(f"need workers >= 1, model_threads >= 0, decode_threads >= 0; got {workers}, "
                         f"{model_threads}, {decode_threads}")
    cores = resolve_workers(0)
    model = model_threads or max(1, cores // workers)
    return ThreadPlan(cores=cores, workers=workers, model=model, decode=decode_threads, opencv=1)


def apply_threads(plan: ThreadPlan) -> None:
    """Set this process's torch (if loaded) and OpenCV thread counts to `plan`'s; ONNX Runtime sessions take
    `plan.model` when they are built."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != plan.model:
        torch.set_num_threads(plan.model)
    try:
        import cv2

        cv2.setNumThreads(plan.opencv)
    except ImportError:
        pass
