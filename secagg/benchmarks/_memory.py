"""Peak memory of a block of code above the memory at its start (RSS or tracemalloc)."""

from __future__ import annotations

import os
import sys
import tracemalloc
from typing import Literal

__all__ = ["MemoryMethod", "PeakMemory"]

#: ``"rss"``: peak resident set size from ``getrusage`` minus the resident size at the
#: start (meaningful in a fresh process); ``"tracemalloc"``: peak traced allocations;
#: ``"none"``: not measured.
MemoryMethod = Literal["rss", "tracemalloc", "none"]


def _rss_now() -> int | None:
    """Current resident set size in bytes (Linux /proc), or None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _rss_peak() -> int | None:
    """Peak resident set size of this process in bytes (``getrusage``), or None."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory of a block above the memory at its start."""

    def __init__(self, method: MemoryMethod) -> None:
        if method == "rss" and (_rss_now() is None or _rss_peak() is None):
            method = "tracemalloc"
        self.method: MemoryMethod = method
        self.peak = 0
        self._base = 0
        self._started_trace = False

    def __enter__(self) -> PeakMemory:
        if self.method == "rss":
            self._base = _rss_now() or 0
        elif self.method == "tracemalloc":
            self._started_trace = not tracemalloc.is_tracing()
            if self._started_trace:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "rss":
            self.peak = max(0, (_rss_peak() or 0) - self._base)
        elif self.method == "tracemalloc":
            self.peak = max(0, tracemalloc.get_traced_memory()[1] - self._base)
            if self._started_trace:
                tracemalloc.stop()
