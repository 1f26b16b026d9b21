"""A policy's training curves (``curves.png`` in its directory, written after a run with
``--val-tasks``): matplotlib on the Agg backend, imported only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lohp_cli.checkpoint import atomic_write_bytes, read_json, read_metrics


def write_curves(out: Path) -> None:
    """``curves.png`` in the policy directory: the training loss and the validation scores of
    its metrics.jsonl, the best step marked (see :func:`curves_plot`)."""
    best = (read_json(out / "config.json").get("validation") or {}).get("best_step")
    curves_plot(read_metrics(out / "metrics.jsonl"), out / "curves.png", best)


def curves_plot(lines: list[dict[str, Any]], path: Path, best_step: int | None = None) -> None:
    """A policy's training curves (PNG at ``path``, written atomically): the training loss, and
    the validation loss and accuracy of ``train-policy --val-tasks`` (metrics.jsonl lines), the
    best step marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in lines if "loss" in m]
    val = [m for m in lines if "val_loss" in m]
    acc = [m for m in val if m.get("val_acc") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], color="C0", lw=1,
            label="training loss")  # fmt: skip
    ax.plot([m["step"] for m in val], [m["val_loss"] for m in val], "o-", color="C1", ms=3,
            label="validation loss")  # fmt: skip
    ax.set_xlabel("policy training step")
    ax.set_ylabel("loss (objective)")
    handles = ax.get_legend_handles_labels()
    if acc:
        ax2 = ax.twinx()
        ax2.plot([m["step"] for m in acc], [m["val_acc"] for m in acc], "s--", color="C2", ms=3,
                 label="validation accuracy")  # fmt: skip
        ax2.set_ylabel("held-out test accuracy", color="C2")
        h2 = ax2.get_legend_handles_labels()
        handles = (handles[0] + h2[0], handles[1] + h2[1])
    if best_step is not None:
        ax.axvline(best_step, color="0.5", ls=":", label=f"best step {best_step}")
        handles = (handles[0] + [ax.lines[-1]], handles[1] + [f"best step {best_step}"])
    ax.legend(*handles, fontsize=8)
    ax.set_title("training and validation curves")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
