"""What a measurement ran on: recorded in every result row so numbers can be compared honestly."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata


@functools.cache
def machine_info() -> dict:
    """CPU model and cores, torch and library versions, and the GPU if torch sees one."""
    import torch

    info = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "gpu_name": None,
        "gpu_count": 0,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def device_label(machine: dict, device: str) -> str:
    """A short description of where a number was measured, for tables: the GPU, else the CPU."""
    if device.startswith("cuda") and machine.get("gpu_name"):
        return f"GPU: {machine['gpu_name']}"
    return f"CPU: {machine['cpu_model']} ({machine['cpu_cores']} cores)"


def device_kind(device: str) -> str:
    return "gpu" if str(device).startswith("cuda") else "cpu"


def _cpu_model() -> str:
    # /proc/cpuinfo names the model on Linux; platform.processor() is often empty there.
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
