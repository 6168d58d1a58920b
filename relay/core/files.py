"""Files only the relay's user may read: var/ and the SQLite database.

var/ holds the TLS key, the secret key that opens provider secrets, and the
outbox; the database holds password hashes and queued mail. Directories are
made 0700 and files 0600 from the start (never written loose and tightened
after), and ones found looser at start (an older relay, a restored backup)
are tightened, with a warning that says so.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("relay.files")

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> bool:
    """Give ``path`` exactly ``mode`` if group or others have any access; True if changed."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return False
    if not current & 0o077:
        return False
    path.chmod(mode)
    log.warning("tightened %s from %04o to %04o", path, current, mode)
    return True


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) 0700; tighten it if it exists looser."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=DIR_MODE, exist_ok=True)
        p.chmod(DIR_MODE)  # mkdir's mode passes through the umask
    if not missing:
        _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> bool:
    """Tighten an existing file to 0600; True if it was looser."""
    return path.exists() and _tighten(path, FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write a new file that is 0600 from its first byte (keys, never a window at 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, FILE_MODE)  # an existing file keeps its mode through O_CREAT


def secure_var(var: Path) -> None:
    """At start: var/ and every directory under it 0700, the files directly in it 0600."""
    private_dir(var)
    for root, dirs, files in os.walk(var):
        for name in dirs:
            _tighten(Path(root) / name, DIR_MODE)
        if Path(root) == var:
            for name in files:
                private_file(var / name)


def create_sqlite_file(database: str) -> None:
    """The SQLite file (and its -wal and -shm) 0600; its directory 0700 if made here.

    SQLite gives the -wal and -shm files the mode of the database file, so
    creating the (empty, valid) database 0600 before SQLite opens it is enough.
    """
    path = Path(database)
    if not path.parent.exists():
        private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        for p in (path, Path(f"{database}-wal"), Path(f"{database}-shm")):
            private_file(p)
