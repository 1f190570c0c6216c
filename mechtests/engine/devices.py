"""Which GPUs this process may use, without importing torch when there is none (the pytest
plugin's worker scheduling and the preflight's CUDA check both ask)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["visible_gpus"]


def _parse_visible(value: str) -> list[str]:
    """CUDA's reading of ``CUDA_VISIBLE_DEVICES``: ids up to the first invalid (``-1``) one."""
    ids: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return ids


def visible_gpus() -> list[str]:
    """Identifiers of the GPUs this process may use (``CUDA_VISIBLE_DEVICES`` entries or
    indices), cheapest source first; an empty list means CPU only."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return _parse_visible(os.environ["CUDA_VISIBLE_DEVICES"])
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20,
                                 check=False)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode != 0:
            return []
        count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        return [str(i) for i in range(count)]
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return []
    import torch  # device files but no nvidia-smi (containers): ask the driver through torch

    return [str(i) for i in range(torch.cuda.device_count())]
