"""Atomic file writes: a hidden temp file beside the target, renamed into place when complete.

`tempfile.mkstemp` creates its file readable by the owner alone (0600), and a rename keeps
that mode, so every finished file is first given the mode a plain `open()` would have given it
(0666 less the umask): stems and checkpoints stay readable by the group and others as usual.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temp_beside(path: Path, suffix: str = ".part") -> tuple[int, Path]:
    """An open descriptor and the name of a new hidden temp file in `path`'s folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    return fd, Path(tmp)


def replace_into_place(tmp: Path, path: Path) -> None:
    """Give `tmp` the usual mode for a new file and rename it over `path` in one step."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    # The umask can only be read by setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[str]:
    """Yield a temporary name beside `path` to write; it replaces `path` only when the block
    ends normally, so an interrupted save never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        yield str(tmp)
        replace_into_place(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
