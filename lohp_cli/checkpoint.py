"""Policy directories: safetensors for tensors, JSON for everything else, atomic writes.

::

    policy/
      model.safetensors          policy weights
      normalization.safetensors  mean/std [P], cond_mean/std [D], step_rms [N]
      config.json                kind, format, train config, layout, store fingerprint, k, N…
      metrics.jsonl              one JSON line per logged step
      state/                     resume: model.safetensors, optimizer.safetensors, trainer.json
                                 (and best.safetensors, the best validated weights)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lohp_cli.errors import CompatibilityError


def _file_mode() -> int:
    """The mode a plain ``open`` gives a new file (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` with the permissions a plain ``open`` would give it
    (``mkstemp`` makes it 0600, which would leave reports and policies unreadable to others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _file_mode())
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, and rename it into place."""
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """safetensors file written atomically (tensors are made contiguous CPU copies)."""
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata
        )
        os.chmod(tmp, _file_mode())  # safetensors recreates the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file is a :class:`CompatibilityError`."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CompatibilityError(f"'{path}' is missing.") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CompatibilityError(f"'{path}' is not a readable safetensors file ({exc}).") from None


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CompatibilityError(f"'{path}' is missing.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompatibilityError(f"'{path}' is not valid JSON ({exc}).") from None


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val
            else:
                extra.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "extra": extra}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    for pid, kv in meta.get("extra", {}).items():
        state.setdefault(int(pid), {}).update(kv)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _complete(d: Path) -> bool:
    """A state directory is complete once its ``trainer.json`` exists: it is written last."""
    return (d / "trainer.json").is_file()


def _fsync_dir(d: Path) -> None:
    """Make the renames inside ``d`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(d: Path) -> None:
    """Remove a directory so that no half-deleted copy of it can ever look complete: it is first
    renamed out of the names :func:`state_dir` reads, then deleted."""
    if not d.exists():
        return
    trash = d.with_name(f"{d.name}.trash-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(d, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_state(
    out: Path,
    model_sd: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    trainer: dict[str, Any],
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write ``state/`` as a whole, so that a crash at any point leaves a checkpoint to resume from;
    ``extra``: more tensors to keep with it, ``{name: tensors}`` as ``state/<name>.safetensors``.

    The new checkpoint is written into ``state.tmp`` (``trainer.json`` last, marking it complete),
    then swapped in: ``state`` → ``state.old``, ``state.tmp`` → ``state``, ``state.old`` removed.
    At every moment one of ``state``, ``state.tmp`` (complete) or ``state.old`` holds a complete
    checkpoint, and a save that follows a cut one first finishes the cut swap, so a second crash
    never removes the last complete checkpoint (see :func:`state_dir`).
    """
    tmp, final, old = out / "state.tmp", out / "state", out / "state.old"
    for leftover in out.glob("state*.trash-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if not _complete(final) and _complete(tmp):  # a swap cut after state.tmp was complete
        _discard(final)
        os.replace(tmp, final)
        _fsync_dir(out)
    _discard(tmp)
    tmp.mkdir(parents=True)
    atomic_save_tensors(tmp / "model.safetensors", model_sd)
    ot, ometa = optimizer_to_tensors(opt)
    atomic_save_tensors(tmp / "optimizer.safetensors", ot)
    atomic_write_json(tmp / "optimizer.json", ometa)
    for name, tensors in (extra or {}).items():
        atomic_save_tensors(tmp / f"{name}.safetensors", tensors)
    atomic_write_json(tmp / "trainer.json", trainer)
    _fsync_dir(tmp)
    if _complete(final):  # otherwise state.old (if any) is the only complete one: keep it
        _discard(old)
        os.replace(final, old)
    else:
        _discard(final)
    os.replace(tmp, final)
    _fsync_dir(out)
    _discard(old)


def state_dir(out: Path) -> Path | None:
    """The newest complete state directory: ``state``; after a cut save, ``state.tmp`` when it
    is complete (it is newer than ``state.old``), else ``state.old``."""
    for name in ("state", "state.tmp", "state.old"):
        d = out / name
        if _complete(d):
            return d
    return None


def load_state(
    out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Load the newest complete ``state/`` of ``out`` (:func:`state_dir`) into ``model`` and
    ``opt`` and return its ``trainer.json`` (``step`` and what the trainer saved with it); None
    when there is none."""
    sdir = state_dir(out)
    if sdir is None:
        return None
    try:
        trainer = read_json(sdir / "trainer.json")
        step = trainer.get("step") if isinstance(trainer, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"trainer.json has step {step!r}, not a step number")
        model.load_state_dict(load_tensors(sdir / "model.safetensors"))
        optimizer_from_tensors(
            opt, load_tensors(sdir / "optimizer.safetensors"), read_json(sdir / "optimizer.json")
        )
    except (CompatibilityError, ValueError, KeyError, TypeError, IndexError, AttributeError,
            RuntimeError) as exc:  # fmt: skip
        reason = str(exc) if isinstance(exc, CompatibilityError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())[:300]
        raise CompatibilityError(
            f"Policy '{out}' has a damaged resume state '{sdir.name}/' ({reason}); remove "
            f"'{sdir}' to train from the start, or pass --overwrite."
        ) from None
    return trainer


def write_checkpoint(
    out: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    trainer: dict[str, Any],
    config: dict[str, Any],
    weights: bool = True,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """A training checkpoint of a policy directory: ``state/`` (:func:`save_state`, with
    ``extra``), then the policy's ``model.safetensors`` (unless not ``weights``: a validated run
    keeps its best there) and ``config.json``, each written atomically."""
    sd = dict(model.state_dict())
    save_state(out, sd, opt, trainer, extra)
    if weights:
        atomic_save_tensors(out / "model.safetensors", sd)
    atomic_write_json(out / "config.json", config)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines logged after ``step`` (written before a crash, redone on resume)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            logged = json.loads(line).get("step", 0)
            if isinstance(logged, int) and logged <= step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by a crash, or damaged
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def append_metrics(path: Path, line: dict[str, Any]) -> None:
    """Append one JSON line to a policy's metrics.jsonl."""
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The readable lines of a metrics.jsonl, in order (a damaged line is skipped; none when
    the file is missing)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines
