"""Stopping long jobs cleanly: SIGINT/SIGTERM become a request that the job honours at a safe point
(after an iteration or a frame, with its progress saved), and loader workers leave them alone."""
from __future__ import annotations

import signal


class Stopper:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop after the current iteration."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker init: leave SIGINT/SIGTERM to the main process. Ctrl-C in a terminal, SLURM and
    `timeout` signal the whole process group; a worker killed by them makes the main process fail in
    its next batch instead of writing its checkpoint. Orphaned workers still exit (torch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
