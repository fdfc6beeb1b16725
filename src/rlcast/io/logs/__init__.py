"""The logs users have, read into one curve object: `read_log(path) -> LogCurve`, whatever the format.

    run folder     run.json (rlcast train), with TRL's trainer_state.json for the denser reward     io.logs.runfolder
    TRL folder     trainer_state.json in the folder or its newest checkpoint-N: eval_* and reward  io.logs.trl
    verl log       the console log, `step:N - key:value - ...` lines (colour codes, gzip fine)     io.logs.verllog
    TensorBoard    events.out.tfevents.* (a file, or a folder holding them; rlcast[tensorboard])   io.logs.tfevents
    CSV            wandb / MLflow exports: a step column and metric columns                       io.logs.csvlog

A folder is a run folder (run.json), else a TRL folder (trainer_state.json), else a TensorBoard log; a file is named
by its name (run.json, trainer_state.json, events.out.tfevents.*, *.csv), else by its first line (a CSV header with
a step column), else read as a verl log, which names the file and what it starts with when it is none of these.
A new format is one new module and one line in READERS.
"""

from __future__ import annotations

from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.logs import csvlog, runfolder, tfevents, trl, verllog
from rlcast.io.logs.curve import LogCurve, listing, lines

READERS = {"run": runfolder.read, "trl": trl.read, "verl": verllog.read, "tensorboard": tfevents.read,
           "csv": csvlog.read}


def detect(path: str | Path) -> tuple[str, Path]:
    """(format, the path its reader takes) of `path`; a folder holding no log is one line naming what it holds."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RlcastError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "run.json").is_file():
            return "run", path
        if trl.state_file(path):
            return "trl", path
        if any(path.rglob(tfevents.PREFIX + "*")):
            return "tensorboard", path
        found = listing(child.name for child in path.iterdir())
        raise RlcastError(f"{path}: no run.json, trainer_state.json (or checkpoint-N/trainer_state.json) or "
                          f"TensorBoard event file in this folder; found: {found}")
    name = path.name
    if name == "run.json":
        return "run", path.parent
    if name == trl.STATE:
        return "trl", path
    if name.startswith(tfevents.PREFIX):
        return "tensorboard", path
    if name.endswith((".csv", ".csv.gz")):
        return "csv", path
    head = lines(path, "log")
    first = next(head, "")
    head.close()
    return ("csv" if csvlog.is_header(first) else "verl"), path


def read_log(path: str | Path, metric: str | None = None, reward: str | None = None,
             eval_size: int | None = None) -> LogCurve:
    """The held-out curve (`metric`: default the source's only validation metric; run.json's accuracy in a run
    folder) and training reward (`reward`: default the format's usual one) of the log at `path`; `eval_size`: the
    number of validation prompts behind each point, for the noise model (logs rarely record it; it replaces run.json's
    config eval_prompts)."""
    fmt, where = detect(path)
    return READERS[fmt](where, metric=metric, reward=reward, eval_size=eval_size)


__all__ = ["READERS", "LogCurve", "detect", "read_log"]
