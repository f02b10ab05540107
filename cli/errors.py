"""Turning errors the user can fix into one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad arguments or inputs, reported as one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe a problem with the user's input, not a bug."""
    from domains.from_torch import UnsupportedModule
    from training.datasets import DatasetError
    from verifier.onnx_import import OnnxImportError
    from verifier.spec import SpecError

    return (UserError, SpecError, OnnxImportError, DatasetError, UnsupportedModule, FileNotFoundError,
            IsADirectoryError, PermissionError)


def run_main(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run a command's main, mapping user errors to exit 2 and Ctrl-C to exit 130."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; results computed so far were saved", file=sys.stderr)
        return 130
    except user_errors() as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
