"""One line naming the machine a benchmark ran on, so that every result file says where it came from."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections import Counter

import psutil


def _gpus() -> str:
    """``"1x NVIDIA H200"``-style summary from nvidia-smi, or "" on a machine without one."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    names = Counter(line.strip() for line in out.splitlines() if line.strip())
    return ", ".join(f"{n}x {name}" for name, n in names.items())


def describe_machine() -> str:
    """``"HOST (2 CPUs, 24 GB)"``, with the GPUs when there are any."""
    parts = [f"{os.cpu_count()} CPUs", f"{psutil.virtual_memory().total / 2**30:.0f} GB"]
    gpus = _gpus()
    if gpus:
        parts.append(gpus)
    return f"{platform.node()} ({', '.join(parts)})"
