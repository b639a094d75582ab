"""Wall time and peak RSS of each phase of the dedup stage (for the run record and the benchmark)."""

from __future__ import annotations

import os
import resource
import time

PHASE_PEAKS_ENV = "VISPREP_DEDUP_PHASE_PEAKS"
"""Set to 1 to measure each phase's own peak RSS: the kernel's high-water mark is reset at every phase start
(/proc/self/clear_refs), which also drops the earlier peak from `getrusage`, so it is opt-in (the benchmark's child
process sets it and takes the overall peak as the maximum over the phases)."""


def _hwm_mib() -> int:
    """Peak RSS of this process in MiB (VmHWM; `ru_maxrss` where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PhaseClock:
    """Laps of a staged computation: `seconds[phase]`, and `peak_rss_mib[phase]`: the phase's own peak RSS when
    `PHASE_PEAKS_ENV` is set (else the process peak so far, which only shows the phase where it rose)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss_mib: dict[str, int] = {}
        self.per_phase = os.environ.get(PHASE_PEAKS_ENV) == "1" and _reset_hwm()
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Close `phase` (started at the previous lap or at creation) and start the next one; a phase lapped again
        (one per chunk of pairs) adds its time and keeps its highest peak."""
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._t, 3)
        self.peak_rss_mib[phase] = max(self.peak_rss_mib.get(phase, 0), _hwm_mib())
        if self.per_phase:
            _reset_hwm()
        self._t = time.perf_counter()
