"""Devices, seeds and provenance shared by every stage."""

from __future__ import annotations

import hashlib
import os
import platform
import random
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

from lohp_cli import __version__
from lohp_cli.errors import ConfigError


def resolve_device(spec: str) -> str:
    """Turn ``auto|cpu|cuda|cuda:i`` into a concrete torch device string.

    ``auto`` picks ``cuda`` when CUDA is available and ``cpu`` otherwise. Asking for CUDA on a
    machine without it is a config error, not a silent fallback.
    """
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"Device '{spec}' asked for, but CUDA is not available; use --device cpu."
            )
        if ":" in spec:
            idx = spec.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise ConfigError(
                    f"Device '{spec}' does not exist; this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s)."
                )
        return spec
    raise ConfigError(f"Unknown device '{spec}'; use auto, cpu, cuda or cuda:i.")


def derive_seed(base: int, *parts: object) -> int:
    """A 63-bit seed that depends only on ``base`` and ``parts`` (not on worker order)."""
    text = "|".join([str(base), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seed_everything(seed: int) -> int:
    """Seed ``random``, numpy and torch; return the seed so callers can record it."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def git_revision() -> str | None:
    """The git revision of the lohp source tree, when it is a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(device: str | None = None) -> dict[str, Any]:
    """What made an artifact: versions, machine, command line, time."""
    import torch

    return {
        "lohp_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "argv": list(sys.argv),
        "git_revision": git_revision(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
