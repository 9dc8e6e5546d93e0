"""Turn exceptions into the one-line message and exit code the CLI prints."""

from __future__ import annotations

from eval.musdb import TrackReadError
from sepcli.audio import AudioError
from sepcli.batch import UsageError
from sepcli.checkpoints import CheckpointError
from sepcli.datasets import DataError
from sepcli.engine import EngineError

USAGE = 2


def describe(err: BaseException) -> tuple[str, int]:
    """(message, exit code) for an error that reached the top of the CLI; message may be ""."""
    if hasattr(err, "format_message") and hasattr(err, "exit_code"):
        # click's (or typer's bundled click's) usage errors: bad option, missing argument...
        if not err.format_message():
            return "", USAGE  # `sepcli` alone: the help is the whole answer
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return err.format_message() + hint, USAGE
    if isinstance(err, TrackReadError):
        return str(err), 1
    if isinstance(err, (UsageError, CheckpointError, EngineError, AudioError, DataError)):
        return str(err), USAGE
    if isinstance(err, (ValueError, FileNotFoundError)):
        return str(err), USAGE
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or err}{where}", 1
    return f"unexpected {type(err).__name__}: {err} (rerun with --debug for a traceback)", 1
