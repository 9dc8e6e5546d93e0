"""Files: atomic writes through locked temp files, stale temp clean-up, and regular-file checks.

A write goes to a hidden temp file beside its target, `.<name>.<8 random>.<suffix>`, and is
renamed into place when complete. The writer holds an exclusive `flock` on its temp file for as
long as it lives, so a later run can tell a temp file that a killed run left behind (no lock:
remove it) from one that a live process is still writing (locked: leave it). The temp name cuts
the target's name so that it stays within the file system's name limit.

`tempfile.mkstemp` creates its file readable by the owner alone (0600), and a rename keeps that
mode, so every finished file is first given the mode a plain `open()` would have given it (0666
less the umask): stems and checkpoints stay readable by the group and others as usual.

Inputs are opened only when they are regular files: a FIFO or a device given as a checkpoint,
config or audio file would block the open (or read forever) inside a library that retries on
EINTR, where no signal can stop it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIXES = (".raw.part", ".wav.part", ".flac.part", ".mp3.part", ".part")
RANDOM_CHARS = 8  # what mkstemp puts between prefix and suffix
_locked_fds: dict[str, int] = {}  # temp path -> the descriptor that holds its lock
# Temp files this process made and has not yet renamed into place or removed.
_live_temps: set[str] = set()
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _name_limit(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _temp_prefix(path: Path, suffix: str) -> str:
    """`.<name>.`, with `name` cut (at a character boundary) so the whole temp name fits."""
    limit = _name_limit(path.parent)
    room = limit - len(os.fsencode(suffix)) - RANDOM_CHARS - 2
    name = path.name
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}."


def temp_beside(path: Path, suffix: str = ".part") -> tuple[int, Path]:
    """An open descriptor and the name of a new hidden temp file in `path`'s folder, locked."""
    path = Path(path)
    # Stop signals wait while the file is made and recorded: one landing in between would
    # leave a temp file that `remove_live_temps` does not know of.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        prefix = _temp_prefix(path, suffix)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        _live_temps.add(tmp)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, Path(tmp)


def remove_live_temps() -> None:
    """Remove every temp file this process made and has not renamed into place: the last
    step of an interrupted run, for a signal that landed before a writer knew its temp file."""
    for tmp in list(_live_temps):
        remove_temp(Path(tmp))


def locked_temp_beside(path: Path, suffix: str = ".part") -> Path:
    """The name of a new temp file beside `path` for a library to write by name; its lock is
    held by a descriptor kept here until `release_temp` (or the process's end)."""
    fd, tmp = temp_beside(path, suffix)
    _locked_fds[str(tmp)] = fd
    return tmp


def release_temp(tmp: Path) -> None:
    """Close the descriptor that holds `tmp`'s lock (after it was renamed or removed)."""
    fd = _locked_fds.pop(str(tmp), None)
    if fd is not None:
        os.close(fd)


def remove_temp(tmp: Path) -> None:
    """Delete a temp file of ours and drop its lock."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    _live_temps.discard(str(tmp))
    release_temp(tmp)


def replace_into_place(tmp: Path, path: Path) -> None:
    """Give `tmp` the usual mode for a new file and rename it over `path` in one step."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    _live_temps.discard(str(tmp))


def _umask() -> int:
    # The umask can only be read by setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stale_temps(path: Path) -> list[Path]:
    """Temp files that a write of `path` left behind and that no live process holds."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    found = []
    for suffix in TEMP_SUFFIXES:
        pattern = re.compile(
            re.escape(_temp_prefix(path, suffix))
            + f"[a-z0-9_]{{{RANDOM_CHARS}}}"
            + re.escape(suffix)
        )
        for name in names:
            if pattern.fullmatch(name) and _unlocked(path.parent / name):
                found.append(path.parent / name)
    return sorted(set(found))


def _unlocked(tmp: Path) -> bool:
    """Whether no process holds `tmp`'s lock (a live writer always does)."""
    if str(tmp) in _locked_fds:
        return False
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove what `stale_temps` finds; returns the files removed."""
    removed = []
    for tmp in stale_temps(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[str]:
    """Yield a temporary name beside `path` to write; it replaces `path` only when the block
    ends normally, so an interrupted save never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = locked_temp_beside(path)
    try:
        yield str(tmp)
        replace_into_place(tmp, path)
    finally:
        remove_temp(tmp)


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file ("not found", "is a folder", "is a FIFO"...), or None.

    Only regular files (or links to them) pass: opening a FIFO blocks until a writer comes, and
    a device never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except PermissionError:
        return "permission denied"
    except OSError as err:
        return err.strerror or str(err)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file"


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; ValueError naming `what` otherwise."""
    problem = not_a_regular_file(path)
    if problem:
        raise ValueError(f"{what} {path}: {problem}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped since the check
            raise ValueError(f"{what} {path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {path} is over {limit // 1024} KB; that is not a config")
    return data
