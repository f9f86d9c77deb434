"""Cleans up test servers when the test process dies without doing it itself.

Servers run in process groups of their own (so a stop can end a server's helpers too), which means
they outlive a pytest that is SIGKILLed or crashes. The reaper is a tiny watchdog process started
once per test run: it polls its parent, and when the parent is gone it kills every process group
and runs every clean-up command registered with it (private epmd daemons, network namespaces).
Normal teardown stops everything first; the reaper then has nothing left to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_WATCHDOG = r"""
import os, signal, subprocess, sys, time
parent, ledger = int(sys.argv[1]), sys.argv[2]
while os.getppid() == parent:
    time.sleep(0.5)
try:
    entries = open(ledger).read().splitlines()
except OSError:
    entries = []
for entry in entries:
    kind, _, value = entry.partition(" ")
    try:
        if kind == "group":
            os.killpg(int(value), signal.SIGKILL)
        elif kind == "shell":
            subprocess.run(["sh", "-c", value], timeout=20, capture_output=True)
    except Exception:
        pass
try:
    os.unlink(ledger)
except OSError:
    pass
"""


class Reaper:
    """Registers what must not outlive this process; a watchdog acts on it if we die abruptly."""

    def __init__(self) -> None:
        self._ledger: Path | None = None
        self._lock = threading.Lock()
        self._watchdog: subprocess.Popen[bytes] | None = None

    def _ensure_watchdog(self) -> Path:
        if self._ledger is None or self._watchdog is None:
            handle, path = tempfile.mkstemp(prefix="agentline-reaper-", suffix=".ledger")
            os.close(handle)
            self._ledger = Path(path)
            self._watchdog = subprocess.Popen(  # noqa: S603 - our own interpreter and script
                [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self._ledger)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self._ledger

    def _append(self, line: str) -> None:
        with self._lock, self._ensure_watchdog().open("a") as ledger:
            ledger.write(line.replace("\n", " ") + "\n")

    def process_group(self, pgid: int) -> None:
        """Kill this process group if we die."""
        self._append(f"group {pgid}")

    def forget_process_group(self, pgid: int) -> None:
        """The group ended normally: forget it, so a later reuse of its id is never killed."""
        with self._lock:
            if self._ledger is None:
                return
            entry = f"group {pgid}"
            lines = self._ledger.read_text().splitlines()
            self._ledger.write_text("".join(f"{line}\n" for line in lines if line != entry))

    def shell(self, command: str) -> None:
        """Run this shell command if we die (e.g. delete a network namespace)."""
        self._append(f"shell {command}")

    def close(self) -> None:
        """Normal end: everything was cleaned up already, so dismiss the watchdog."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait(timeout=10)
            self._watchdog = None
        if self._ledger is not None:
            self._ledger.unlink(missing_ok=True)
            self._ledger = None


REAPER = Reaper()
"""One per process: every server and namespace the fixtures start registers here."""
