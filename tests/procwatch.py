"""Every process's command line and environment, sampled from /proc while something runs.

Read from /proc rather than ``ps``: ``ps`` cuts lines at 80 columns when its output is not a
terminal, so a long install path could push both the program name and a leaked value out of
sight.
"""
from __future__ import annotations

import os
import threading


def snapshot() -> list[bytes]:
    """The command line (NUL-separated arguments joined by spaces) and environment of every
    process readable now."""
    found: list[bytes] = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as fh:
                    found.append(fh.read().replace(b"\0", b" "))
            except OSError:
                pass
    return found


class ProcessSampler(threading.Thread):
    """Samples every process until stopped; use as a context manager around the run."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[bytes] = []
        self.rounds = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.extend(snapshot())
            self.rounds += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def __enter__(self) -> "ProcessSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def saw(self, needle: str) -> bool:
        return any(needle.encode() in sample for sample in self.samples)
