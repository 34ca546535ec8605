"""The machine a benchmark ran on: CPU, cores, load, library versions."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from secagg.benchmarks._flower_round import flower_version

__all__ = ["machine_info"]


def machine_info() -> dict[str, Any]:
    """CPU, core count, load, and library versions, for the report."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
        info["cpu"] = model
    except OSError:
        info["cpu"] = platform.processor() or None
    try:
        info["loadavg"] = list(os.getloadavg())
    except (OSError, AttributeError):
        info["loadavg"] = None
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend

        info["cryptography"] = cryptography.__version__
        info["openssl"] = backend.openssl_version_text()
    except Exception:  # informational only
        info["openssl"] = None
    info["flwr"] = flower_version()
    return info
