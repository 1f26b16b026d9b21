"""Progress of a long stage on stderr, one way for every command: a Rich bar with the count, a
short status (the loss, the method being scored), elapsed time and ETA on a terminal; plain
lines when stderr is not a terminal (a log file, CI, cron: every 10 % and at least every
``PLAIN_EVERY_S`` seconds, each with its elapsed time and ETA); nothing with ``-q``.

The library never prints: it emits events, and each command turns them into calls here.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lohp_cli.cli.common import err_console, verbosity

PLAIN_EVERY_S = 30.0  # a plain line at least this often while work goes on


def clock(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss``) of a duration; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:  # None or NaN
        return "-"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StageProgress:
    """One progress display (``label``: what is counted, e.g. ``train-policy``) on ``console``.

    ``start(total)`` begins a phase, ``update(completed=…, advance=…, info=…)`` moves it,
    ``stop()`` ends it; ``log(message)`` prints a line (above the bar on a terminal). A new
    ``start`` ends the phase before it.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or err_console
        self.bar: Progress | None = None
        self.task: Any = None
        self.label, self.total, self.done, self.info = "", 0, 0, ""
        self.t0 = self.last_line = 0.0
        self.next_pct = 10
        self.printed = -1  # the count of the last plain line

    @property
    def mode(self) -> str:
        """quiet (-q), rich (stderr is a terminal) or plain (a file, a pipe)."""
        return "quiet" if verbosity() < 0 else "rich" if self.console.is_terminal else "plain"

    @property
    def active(self) -> bool:
        return self.total > 0

    def start(self, label: str, total: int, completed: int = 0, info: str = "") -> None:
        """Begin counting ``total`` units of ``label`` (``completed`` of them done already)."""
        self.stop()
        self.label, self.total, self.done, self.info = label, max(0, total), completed, info
        self.t0 = self.last_line = time.monotonic()
        self.next_pct = 10 * (100 * completed // max(1, total) // 10 + 1)
        self.printed = -1
        self.resumed = completed  # units done before this process: not in the rate
        if self.mode == "rich" and self.total:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(escape(label), total=total, completed=completed,
                                          info=escape(info))  # fmt: skip

    def update(
        self,
        completed: int | None = None,
        advance: int = 0,
        info: str | None = None,
        total: int | None = None,
    ) -> None:
        """Move the count to ``completed`` (or by ``advance``); ``info``: the status text;
        ``total``: a total that grew (evaluate learns its stepped baselines late)."""
        if not self.active:
            return
        self.done = completed if completed is not None else self.done + advance
        if info is not None:
            self.info = info
        if total is not None:
            self.total = total
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, total=self.total,
                            info=escape(self.info))  # fmt: skip
        elif self.mode == "plain" and self.done != self.printed:
            pct = 100 * self.done // max(1, self.total)
            now = time.monotonic()
            if (
                pct >= self.next_pct
                or now - self.last_line >= PLAIN_EVERY_S
                or (self.done >= self.total)
            ):
                self._line(now)
                self.next_pct = 10 * (pct // 10 + 1)

    def _line(self, now: float) -> None:
        elapsed = now - self.t0
        rate = (self.done - self.resumed) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        info = f" {self.info}" if self.info else ""
        self.console.print(
            f"{escape(self.label)}: {self.done}/{self.total} "
            f"({100 * self.done // max(1, self.total)} %){escape(info)}, elapsed "
            f"{clock(elapsed)}, eta {clock(eta if self.done < self.total else 0)}",
            highlight=False,
            soft_wrap=True,
        )
        self.last_line, self.printed = now, self.done

    def stop(self) -> None:
        """End the phase (the bar disappears; plain mode has printed its last line)."""
        if self.bar is not None:
            self.bar.stop()
        self.bar, self.task, self.total = None, None, 0

    def log(self, message: str) -> None:
        """A log line (Rich markup) on stderr, above the bar, unless quiet."""
        if self.mode != "quiet":
            self.console.print(message, highlight=False)
