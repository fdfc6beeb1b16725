"""The rule every output follows (`check_output`, called by each command before any work): an output never is,
contains or lies inside an input; it replaces only an earlier output of the same rlcast command (recognised by its
record, `rlcast.io.records`), computed with the same settings, unless forced; and the folder it goes in must really be
writable. `claim_folder` creates an output folder filled piece by piece; `scratch_dir` a private scratch folder under
the same rule.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.atomic import write_text_atomic
from rlcast.io.records import MARKER, output_record, read_record
from rlcast.io.temporaries import sweep, temp_path


def check_output(out: Path, command: str, *, folder: bool = False, settings: dict | None = None, run=None,
                 inputs: dict | None = None, force: bool = False, replaces: bool = True,
                 option: str = "--out DIR") -> Path:
    """Check the output `out` (a folder, or a file) of the rlcast `command` before any work; returns it.

    An output never is, contains or lies inside an input, whatever `force`: `run`'s checkpoints and base (and its
    run.json), the other `inputs` ({label: path}), and the run folder itself (an output may go inside it); `run` may
    also be a list of runs (forecast reads several). Every path a command writes or deletes goes through here: results,
    model folders, caches, scratch and snapshot folders (`--accel snapshot_dir`). An existing
    output is replaced only when the same command wrote it and, for a result with `settings`, with the same settings;
    `force` lifts that. `replaces=False`: the command refuses an existing output itself (train, continue, demo).
    The folders it writes in must be writable, tried for real; `option` says where to write instead.
    """
    out = Path(out)
    where = out.resolve()
    for label, path, container in _inputs(run, inputs or {}):
        path = Path(path).resolve()
        if where == path:
            raise RlcastError(f"{out}: is {label}, an input of this command; write elsewhere with {option}")
        if path.is_relative_to(where):
            raise RlcastError(f"{out}: contains {label} ({path}), an input of this command; write elsewhere with "
                              f"{option}")
        if not container and where.is_relative_to(path):
            raise RlcastError(f"{out}: is inside {label} ({path}), an input of this command; write elsewhere with "
                              f"{option}")
    if replaces and (out.exists() or out.is_symlink()):
        _check_replace(out, command, folder, settings, force, option)
    for target in (where.parent, where) if folder and where.is_dir() else (where.parent,):
        target = next(p for p in (target, *target.parents) if p.exists())
        why = _cannot_write(target)
        if why:
            raise RlcastError(f"{target}: not writable ({why}); write elsewhere with {option}")
        sweep(target)
    return out


def _inputs(run, inputs: dict):
    """(label, path, is a run folder) of every input: each run's folder, run.json, checkpoints and base, then
    `inputs`."""
    runs = [] if run is None else list(run) if isinstance(run, (list, tuple)) else [run]
    for i, run in enumerate(runs):
        of = f" of run {i + 1}" if len(runs) > 1 else ""
        if run.root is not None:
            yield f"the run folder{of}", run.root, True
            if (Path(run.root) / "run.json").exists():
                yield f"the run's run.json{of}", Path(run.root) / "run.json", False
        for ckpt in run.checkpoints:
            yield f"checkpoint {ckpt.step}{of}", ckpt.path, False
        if run.base is not None:
            yield f"the base model{of}", run.base, False
    for label, path in inputs.items():
        if path is not None:
            yield label, path, False


def _check_replace(out: Path, command: str, folder: bool, settings: dict | None, force: bool, option: str) -> None:
    if folder and not out.is_dir():
        raise RlcastError(f"{out}: exists and is not a folder; write elsewhere with {option}")
    if not folder and out.is_dir():
        raise RlcastError(f"{out}: is a folder, not a file; write elsewhere with {option}")
    if force or (folder and all(p.name == MARKER for p in out.iterdir())):  # an empty folder holds nothing to lose
        return
    record = read_record(out)
    if record is None or record["command"] != command:
        what = "was not written by" if record is None else f"was written by rlcast {record['command']}, not"
        raise RlcastError(f"{out}: exists and {what} rlcast {command}; pass --force to replace it, or write "
                          f"elsewhere with {option}")
    if settings is not None:
        old, new = record.get("settings") or {}, output_record(command, settings)["settings"]
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if changed:
            diff = ", ".join(f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in changed)
            raise RlcastError(f"{out}: holds the result of rlcast {command} with other settings ({diff}); pass "
                              f"--force to replace it, or write elsewhere with {option}")


def is_writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`, tried for real (os.access says yes to root on a read-only mount)."""
    return _cannot_write(Path(folder)) is None


def _cannot_write(folder: Path) -> str | None:
    """None when a file can be created (and removed) in `folder`, else why not."""
    probe = temp_path(folder, "probe", ".")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as err:
        return err.strerror or str(err)
    probe.unlink(missing_ok=True)
    return None


def claim_folder(folder: Path, record: dict) -> Path:
    """Create the output folder `folder` that rlcast fills piece by piece (a run, a folder of models) with its MARKER
    (`record`), after `check_output`; an existing marker stays."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).exists():
        write_text_atomic(folder / MARKER, json.dumps(record) + "\n")
    return folder


@contextmanager
def scratch_dir(purpose: str, run=None):
    """A private folder in the system temp dir (TMPDIR), deleted when the block ends (also on SIGTERM and SIGINT:
    the CLI turns them into exceptions); leftovers of killed processes are swept first. With `run` (a Run or a list),
    the folder follows the rule for outputs (`check_output`): a TMPDIR inside the run's checkpoints or base is
    refused before any work."""
    root = Path(tempfile.gettempdir())
    path = temp_path(root, purpose)
    if run is not None:
        check_output(path, purpose, folder=True, run=run, replaces=False, option="TMPDIR=DIR")
    sweep(root)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
