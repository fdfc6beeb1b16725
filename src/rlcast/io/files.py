"""Bounded reads of the user's files: regular files only, JSON under a size limit.

A FIFO or a device given where a file is expected (run.json pointing at /dev/zero, a FIFO named model.safetensors)
would block the read or never end it; a huge JSON file would exhaust the memory. Every read of a user's JSON (run.json,
trainer_state.json, config files, shard indexes) goes through `read_json`, and every weights file through
`regular_file`, so each of those is a one-line error naming the file instead.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from rlcast.errors import RlcastError

MAX_JSON_MB = 256  # the largest JSON file rlcast reads (a trainer_state.json of 10^6 log entries is ~200 MB)


def regular_file(path: str | Path, what: str = "file") -> Path:
    """`path` when it is a regular file (a symlink to one is fine), else a one-line error naming it and what it is."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise RlcastError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise RlcastError(f"{path}: the {what} is {kind}, not a regular file")
    return path


def read_json(path: str | Path, what: str = "JSON file", limit_mb: float | None = None):
    """The decoded JSON of the regular file `path` (at most `limit_mb` MB, default MAX_JSON_MB); unreadable, too large,
    not JSON or nested too deeply is a one-line error naming the file and `what` it is (e.g. "run manifest")."""
    limit_mb = MAX_JSON_MB if limit_mb is None else limit_mb
    path = regular_file(path, what)
    try:
        # opened without blocking and checked again on the open file: a FIFO swapped in after the check cannot hang it
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > limit_mb * 2**20:
                raise ValueError(f"larger than {limit_mb:g} MB")
            # the file's own size plus one byte: a file growing past the limit while read is still caught, and no
            # buffer of the limit's size is reserved for a small file
            data = f.read(info.st_size + 1)
            if len(data) > info.st_size:
                data += f.read(int(limit_mb * 2**20) + 1 - len(data))
        if len(data) > limit_mb * 2**20:
            raise ValueError(f"larger than {limit_mb:g} MB")
        return json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
        raise RlcastError(f"{path}: unreadable {what} ({reason})") from None
