"""Atomic outputs: every output folder and file is built under a temporary name beside its final one and renamed into
place only when complete (`atomic_folder`, `atomic_file`, `write_text_atomic`, `write_json_atomic`), so an interrupted
write never leaves a half-written output under the final name; the result gets the mode the umask asks for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.records import MARKER, RECORD, json_safe, output_record, read_record
from rlcast.io.temporaries import remove, sweep, temp_path


@contextmanager
def atomic_folder(out: Path, record: dict | None = None, force: bool = False):
    """Build a folder under a temporary name beside `out`; on success it replaces `out`, on failure it vanishes.

    Every output folder rlcast writes (models, run bases, snapshots, example runs) goes through here, so an
    interrupted write never leaves a half-written folder under the final name. The folder gets the MARKER file with
    `record` (`output_record`). An existing `out` is replaced only when it is empty or rlcast wrote it, unless `force`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep(out.parent)
    tmp = temp_path(out.parent, "tmp", f".{out.name}.")
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps(record or output_record(None)) + "\n")
        follow_umask(tmp)
        _replace(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path, force: bool = False) -> None:
    """Move the finished folder into place; an existing `out` is swapped out first, then deleted."""
    if not out.exists() and not out.is_symlink():
        tmp.rename(out)
        return
    if not out.is_dir() or out.is_symlink():
        raise RlcastError(f"{out}: exists and is not a folder")
    if not force and read_record(out) is None and any(out.iterdir()):
        raise RlcastError(f"{out}: exists and was not written by rlcast; pass --force to replace it")
    old = temp_path(out.parent, "old", f".{out.name}.")
    out.rename(old)
    tmp.rename(out)
    remove(old)


@contextmanager
def atomic_file(path: Path):
    """Yield a temp path beside `path`; when the block succeeds it is renamed onto `path`, else deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent)
    tmp = temp_path(path.parent, "tmp", f".{path.name}.")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read from /proc where it can be (os.umask only reads it by setting it, for all threads)."""
    try:
        return int(re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.M).group(1), 8)
    except (OSError, AttributeError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def follow_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the mode a new file or folder gets under the umask, as
    the user expects of an output: mkstemp and safetensors create 0600 files whatever it says. Hard-linked files
    (continue_from links its source's) are shared with an input and keep theirs."""
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        st = p.lstat()
        if p.is_symlink() or (not p.is_dir() and st.st_nlink > 1):
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a small text output (JSON, HTML) atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: Path, obj, indent: int | None = 2, record: dict | None = None) -> Path:
    """`obj` as JSON (non-finite floats as null), written atomically; `record` (`output_record`) goes first."""
    if record is not None:
        obj = {RECORD: record, **obj}
    return write_text_atomic(path, json.dumps(json_safe(obj), indent=indent) + "\n")
