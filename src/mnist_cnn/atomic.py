"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the project writes (weights, metadata, reports, downloads) goes through here:
write to a temporary file in the same directory, flush it to disk, then ``os.replace``
it over the target, which is atomic on POSIX and Windows.

A write that fails (full disk, read-only file system, no permission) leaves the old file
as it was, removes the temporary file, and raises ``WriteError``: an ``OSError`` whose
message is one line naming the file the caller meant to write (not the temporary file)
and the reason, ready to print.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class WriteError(OSError):
    """Writing a file failed: ``cannot write <file>: <reason>``. Keeps the ``errno``
    (``errno.ENOSPC``, ``EROFS``, ``EACCES``...) of the ``OSError`` it replaces."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _write_error(path: Path, exc: OSError) -> WriteError:
    if isinstance(exc, WriteError):
        return exc
    return WriteError(exc.errno, exc.strerror or str(exc) or type(exc).__name__, str(path))


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path``. Raises
    ``WriteError`` when the file cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileExistsError as exc:  # mkdir found a file where the directory should be
        error = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        raise _write_error(path, error) from exc
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, mode) as f:
            # mkstemp creates the file private (0600); give it the permissions open() would.
            os.chmod(tmp, 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # Also on KeyboardInterrupt: never leave a half-written temp file behind.
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    sync_directory(path.parent)


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (the renames done in it) to disk, where the system
    allows it: without this a power cut can undo a rename that had already returned.
    Best effort: some systems (Windows) cannot open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    # Linux shows the umask in /proc; elsewhere the only way to read it is to set it (and
    # at once set it back), which touches process-wide state for a moment.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically. Raises ``WriteError``."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically. Raises ``WriteError``."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> None:
    """Call ``writer(file)`` on a temporary binary file that then replaces ``path``.

    For libraries that write to a file object: ``Figure.savefig``, ``np.savez``. (torch.save
    is given the bytes instead, ``checkpoint.state_bytes``: into a file it reports a full
    disk as its own RuntimeError, "enforce fail at inline_container.cc".) Raises
    ``WriteError`` for an ``OSError`` of the file (the writer's own errors pass through).
    """
    with atomic_open(path, "wb") as f:
        writer(f)
