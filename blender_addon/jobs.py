"""Long jobs started from Blender's UI run as subprocesses, so Blender never freezes.

Render frames runs the same `render.py` command a cluster job would run; Train translator and
Translate data set run `python -m backend.train` / `backend.translate` with the interpreter of
the project's environment (Blender's own Python has no torch). A reader thread collects their
output; the UI polls `Job.poll()` from a timer and shows progress parsed from the lines.
Pure Python: no bpy.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .core.progress import parse_progress


class JobError(RuntimeError):
    pass


@dataclass
class Progress:
    done: int = 0
    total: int = 0
    rate: float = 0.0
    unit: str = ""
    eta: str = ""
    last_line: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass
class Job:
    name: str
    command: list[str]
    cwd: str | None = None
    env: dict | None = None
    progress: Progress = field(default_factory=Progress)
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None
    cancelled: bool = False

    def start(self) -> "Job":
        self._queue: queue.Queue = queue.Queue()
        self._kill_at: float | None = None  # when a cancelled job that still runs is killed
        self._proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, bufsize=0,
                                      start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        buf = b""
        for chunk in iter(lambda: self._proc.stdout.read(4096), b""):
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)  # tqdm redraws with \r
            for p in parts:
                if p.strip():
                    self._queue.put(p.decode("utf-8", "replace"))
        if buf.strip():
            self._queue.put(buf.decode("utf-8", "replace"))

    def poll(self) -> bool:
        """Take new output; True while the job runs."""
        self._kill_if_overdue()
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            self.lines.append(line)
            self.progress.last_line = line
            p = parse_progress(line)  # the one progress format (core/progress.py)
            if p is not None:
                self.progress.done, self.progress.total, self.progress.rate = p.done, p.total, p.rate
                self.progress.unit, self.progress.eta = p.unit, p.eta
        if self.returncode is None and self._proc.poll() is not None:
            self._reader.join(timeout=5)
            self.returncode = self._proc.returncode
            self.poll()
        return self.returncode is None

    def wait(self, timeout: float | None = None) -> int:
        """Block until the job ends (or `timeout` seconds: subprocess.TimeoutExpired), killing a cancelled job
        that outlives its grace time."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            steps = [t - time.monotonic() for t in (end, self._kill_at) if t is not None]
            try:
                self._proc.wait(max(0.0, min(steps)) if steps else None)
                break
            except subprocess.TimeoutExpired:
                if end is not None and time.monotonic() >= end:
                    raise
                self._kill_if_overdue()
        while self.poll():
            pass
        return self.returncode

    KILL_AFTER_S = 30.0

    def cancel(self, grace: float = KILL_AFTER_S) -> None:
        """SIGTERM to the job's process group, and return at once (the UI calls this; waiting here froze
        Blender): render.py stops after its current frame and backend.train checkpoints (both stay
        resumable; SIGINT is not used because Blender swallows it while Cycles renders). poll() and wait()
        send SIGKILL if it still runs `grace` seconds later."""
        self.cancelled = True
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            self._kill_at = time.monotonic() + grace

    def _kill_if_overdue(self) -> None:
        if self._kill_at is not None and time.monotonic() >= self._kill_at and self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._kill_at = None

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:  # it ended in between
            pass

    @property
    def error(self) -> str:
        """The command's own one-line error, or its last line."""
        for line in reversed(self.lines):
            if "error:" in line:
                return line.strip()
        return self.lines[-1].strip() if self.lines else f"{self.name} exited with status {self.returncode}"


def render_command(args: list[str], blender_binary: str = "") -> list[str]:
    """The headless render command: Blender's binary if we run inside Blender, else this Python."""
    script = str(Path(__file__).with_name("render.py"))
    if blender_binary and os.path.basename(blender_binary).lower().startswith("blender"):
        return [blender_binary, "-b", "--factory-startup", "-P", script, "--", *args]
    return [sys.executable, script, *args]


def check_backend_python(python: str) -> None:
    """The project's interpreter must exist and import torch and the backend."""
    if not python:
        raise JobError("set the project's Python interpreter in the add-on preferences "
                       "(e.g. /path/to/lapsynth/.venv/bin/python)")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise JobError(f"Python interpreter {python!r} not found or not executable (add-on preferences)")
    try:
        probe = subprocess.run([python, "-c", "import torch, backend.train, backend.translate"],
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JobError(f"Python interpreter {python!r} cannot be run ({e})") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise JobError(f"{python} cannot import the backend ({last}); install the project in that "
                       f"environment: pip install -e /path/to/lapsynth")
