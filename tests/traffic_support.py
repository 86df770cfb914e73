"""Client traffic for fault tests: a thread that writes and reads back, recording every error."""
from __future__ import annotations

import threading
from typing import Any, List

from cauldron_zmq.testing import wait_until


class Traffic(threading.Thread):
    """Writes then reads back COUNT on each service, paced, recording every error."""

    def __init__(self, services: List[Any]) -> None:
        super().__init__(name="traffic", daemon=True)
        self.services = services
        self.ops = 0
        self.errors: List[str] = []
        self.finished = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.finished.is_set():
            n += 1
            for svc in self.services:
                try:
                    kw = svc["COUNT"]
                    written = kw.write(n)
                    read = kw.read()
                    if written != str(n) or read != str(n):
                        self.errors.append(f"{svc.name}: wrote {n}, got {written}, read {read}")
                except Exception as exc:  # noqa: BLE001 - the test reports them all
                    self.errors.append(f"{svc.name}: {type(exc).__name__}: {exc}")
                self.ops += 2
            self.finished.wait(0.003)        # pace: a few hundred operations a second

    def progressed(self, by: int, timeout: float = 10.0) -> None:
        mark = self.ops
        wait_until(lambda: self.ops >= mark + by, timeout, message=f"{by} more operations")

    def stop(self) -> None:
        self.finished.set()
        self.join(30)
