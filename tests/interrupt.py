"""Interrupting a command-line run midway: start it as a subprocess, wait until it has done some work, signal it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.paths import REPO


def interrupt_midway(args: list[str], ready: Callable[[], bool], sig: int, timeout: float = 300.0
                     ) -> tuple[int, str]:
    """Runs ``python -m <args>`` from the repository, sends ``sig`` once ``ready()`` holds; returns (exit code,
    stderr). Skips the test if the run finishes before it could be interrupted."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=_default_sigint if os.name == "posix" else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not _safely(ready):
        time.sleep(0.05)
    if process.poll() is not None:
        _, err = process.communicate()
        pytest.skip(f"the run ended (exit {process.returncode}) before it could be interrupted: {err[-300:]}")
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def _default_sigint() -> None:
    """SIGINT back to its default in the child: started from a background job (``cmd &`` in a script), the
    tests inherit it ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _safely(ready: Callable[[], bool]) -> bool:
    """``ready()``, False while the files it reads are still being written."""
    try:
        return ready()
    except (OSError, ValueError, KeyError):
        return False
