"""Turning errors the user can fix into one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable


class UserError(Exception):
    """Bad arguments or inputs, reported as one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe a problem with the user's input, not a bug."""
    from nncert.domains.from_torch import UnsupportedModule
    from nncert.training.config import ConfigError
    from nncert.training.datasets import DatasetError
    from nncert.verifier.onnx_import import OnnxImportError
    from nncert.verifier.results import ResumeError
    from nncert.verifier.spec import SpecError

    return (UserError, SpecError, OnnxImportError, DatasetError, ConfigError, ResumeError, UnsupportedModule,
            FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (via run_main), not usage plus message."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def run_main(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None,
             interrupted: str = "results computed so far were saved") -> int:
    """Run a command's main, mapping user errors to exit 2 and Ctrl-C or SIGTERM to exit 130.

    Results are written as they are computed (atomically), so an interrupted
    run keeps everything finished before the signal.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
    except user_errors() as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    """SIGTERM handled like Ctrl-C: unwinds to run_main, which reports and exits."""
    raise KeyboardInterrupt
