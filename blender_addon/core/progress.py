"""The progress line of every long program, and its parser (the Blender panel reads these lines).

    frames 12/100  1.93 frames/s  ETA 00:00:45        (render.py)
    translate 30/400  88.10 images/s  ETA 00:00:04     (backend.translate)
    train 500/2500  2.31 it/s  ETA 00:14:25           (backend.train)
    segment 40/300  1.10 it/s  ETA 00:03:56           (backend.segment)

One format, written by `progress_line` and read by `parse_progress`; tests run each program and
parse its lines with the same function the panel uses.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

_LINE = re.compile(r"^(?P<what>[a-z][\w-]*) (?P<done>\d+)/(?P<total>\d+)\s+(?P<rate>[\d.]+|nan) (?P<unit>[\w]+)/s"
                   r"\s+ETA (?P<eta>\d\d:\d\d:\d\d|--:--:--)\s*$")


@dataclass
class ProgressLine:
    what: str
    done: int
    total: int
    rate: float
    unit: str
    eta: str


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_line(what: str, done: int, total: int, rate: float, unit: str) -> str:
    """`what done/total  rate unit/s  ETA hh:mm:ss`; done, total and rate count the same unit."""
    eta = (total - done) / rate if rate > 0 else float("nan")
    return f"{what} {done}/{total}  {rate:.2f} {unit}/s  ETA {format_eta(eta)}"


def parse_progress(line: str) -> ProgressLine | None:
    m = _LINE.match(line.strip())
    if not m:
        return None
    return ProgressLine(m["what"], int(m["done"]), int(m["total"]), float(m["rate"]), m["unit"], m["eta"])


class Reporter:
    """Prints a progress line at most every `every` seconds (and always for the last item)."""

    def __init__(self, what: str, total: int, unit: str, log, every: float = 2.0, done: int = 0):
        self.what, self.total, self.unit, self.log, self.every = what, total, unit, log, every
        self.start_done, self.started, self.last = done, time.perf_counter(), -math.inf

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not (force or done >= self.total or now - self.last >= self.every):
            return
        self.last = now
        rate = (done - self.start_done) / max(now - self.started, 1e-9)
        self.log(progress_line(self.what, done, self.total, rate, self.unit))
