"""The software and hardware a run trained on, recorded beside its config.

Bit-for-bit reproduction of a training run holds on one machine type only: the float rounding of
the CPU kernels depends on the instruction set they dispatch to (measured on the embedded benchmark:
the same cell, same commit and seed, gave source CE 2.57652 after 20 steps on a Xeon with AVX-512
and AMX, 2.57706 with oneDNN limited to AVX2, 2.57734 on the machine of an earlier day, and the
1000-iteration runs ended 7.5 mIoU apart). :func:`environment` is what a run records
(``environment.json``, one entry per start or resume), so that a difference between two records can
be traced to the machine rather than guessed at.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Optional

from balda.core.atomic import atomic_write_text

__all__ = ["environment", "describe", "record"]

#: Distributions whose versions can change a run's numbers (kernels, image decoding and resizing).
PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "pillow")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: Optional[str] = None) -> dict:
    """A JSON-able description of this process's machine and numeric stack: CPU model, the
    instruction set torch's CPU kernels dispatch to (``torch.backends.cpu.get_cpu_capability()``),
    core count, the CUDA device's name when ``device`` is a CUDA device, the versions of
    :data:`PACKAGES`, Python, and the thread settings that change kernel blocking."""
    import torch

    env = {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
    }
    for var in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if os.environ.get(var):
            env.setdefault("env", {})[var] = os.environ[var]
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def describe(env: dict) -> str:
    """One line: ``<cpu> (<capability>), <n> threads[, <gpu>], torch X, numpy Y, opencv Z``."""
    pk = env.get("packages", {})
    parts = [f"{env.get('cpu', '?')} ({env.get('cpu_capability', '?')}), {env.get('torch_threads', '?')} threads"]
    if env.get("cuda_device"):
        parts.append(env["cuda_device"])
    parts += [
        f"{name} {pk.get(dist) or '-'}"
        for name, dist in (("torch", "torch"), ("numpy", "numpy"), ("opencv", "opencv-python-headless"))
    ]
    return ", ".join(parts)


def record(run_dir, step: int, device: Optional[str] = None) -> dict:
    """Append this process's :func:`environment` (with the iteration it starts at) to
    ``run_dir/environment.json`` (``{"starts": [...]}``, written atomically) and return it; a run
    resumed on another machine thus keeps both."""
    path = Path(run_dir) / "environment.json"
    starts: list = []
    if step > 0 and path.is_file():  # a fresh start (step 0) replaces the record of a discarded run
        try:
            starts = list(json.loads(path.read_text()).get("starts", []))
        except (OSError, ValueError, AttributeError):
            starts = []
    env = {"step": int(step), **environment(device)}
    atomic_write_text(path, json.dumps({"starts": [*starts, env]}, indent=1) + "\n")
    return env
