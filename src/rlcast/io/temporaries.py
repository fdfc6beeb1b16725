"""Temporaries: every temporary file or folder rlcast makes is named after its host and process
(PREFIXrlcast-KIND-HOST-PID-RANDOM, `temp_path`), so a later run sweeps those of killed processes (`sweep`), and
nothing else.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEMP = re.compile(r"^(?P<prefix>.*?)rlcast-(?P<kind>[a-z]+)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_path(folder: Path, kind: str, prefix: str = "") -> Path:
    """A fresh name in `folder`: PREFIXrlcast-KIND-HOST-PID-RANDOM, so that a later run knows whose it is."""
    return Path(folder) / f"{prefix}rlcast-{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # Windows' os.kill(pid, 0) would end the process: never sweep there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove(path: Path) -> None:
    """Delete a file or folder as far as permissions allow (another user's leftovers in TMPDIR stay theirs)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def sweep(folder: Path) -> None:
    """Remove the temporaries that rlcast processes of this machine left in `folder` and that are gone (killed by
    SIGKILL, a power cut); an output whose replacement was cut between its two renames gets its old copy back.
    Nothing else is touched."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMP.match(name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        path, prefix = Path(folder) / name, match["prefix"]
        original = Path(folder) / prefix[1:-1] if len(prefix) > 2 and prefix[0] == prefix[-1] == "." else None
        if match["kind"] == "old" and original is not None and not original.exists():
            try:
                path.rename(original)
            except OSError:  # another process got there first
                pass
        else:
            remove(path)
