"""TensorBoard event files (`events.out.tfevents.*`), as verl's and TRL's `tensorboard` loggers write them.

Read with the tensorboard package's own loader (the optional extra `rlcast[tensorboard]`), which migrates the legacy
`simple_value` scalars (tensorboardX, torch's SummaryWriter) and TF2's tensor scalars to one form. A folder's event
files are read in name order (their names start with the time they were opened: a resumed run appends a file); a
folder whose event files sit in several sub-folders (several runs) asks for one of them. Scalar tags are the logger's
keys: verl's `val/...`, `critic/score/mean`; TRL's `eval/...`, `train/reward`.
"""

from __future__ import annotations

from pathlib import Path

from rlcast.errors import RlcastError
from rlcast.io.files import regular_file
from rlcast.io.logs.curve import LogCurve, Series, build, check_step, listing

PREFIX = "events.out.tfevents."
REWARDS = ("critic/score/mean", "train/reward", "critic/rewards/mean", "reward")


def event_files(path: Path) -> list[Path]:
    """The event files of `path` (the file itself, or those of the one folder under `path` that holds them)."""
    if not path.is_dir():
        return [regular_file(path, "TensorBoard event file")]
    files = sorted(f for f in path.rglob(PREFIX + "*") if f.is_file())
    folders = sorted({f.parent for f in files})
    if len(folders) > 1:
        raise RlcastError(f"{path}: TensorBoard event files of several runs ({listing(str(f) for f in folders)}); "
                          f"name one folder")
    return files


def read(path: str | Path, metric: str | None = None, reward: str | None = None,
         eval_size: int | None = None) -> LogCurve:
    """The LogCurve of an event file or a folder of them."""
    path = Path(path)
    files = event_files(path)
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # optional, heavy
        from tensorboard.util.tensor_util import make_ndarray  # optional, heavy
    except ImportError:
        raise RlcastError(f"{path}: reading TensorBoard event files needs the tensorboard package: "
                          f"pip install 'rlcast[tensorboard]'") from None
    series: Series = {}
    for file in files:
        try:
            for event in EventFileLoader(str(file)).Load():
                for value in event.summary.value:
                    if value.metadata.plugin_data.plugin_name != "scalars":
                        continue
                    step = check_step(int(event.step), f"{file}: the step of {value.tag}")
                    series.setdefault(value.tag, {})[step] = float(make_ndarray(value.tensor).reshape(-1)[0])
        except RlcastError:
            raise
        except Exception as err:  # the loader's own errors (a corrupt record, not a TFRecord file) vary by version
            raise RlcastError(f"{file}: unreadable TensorBoard event file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not series:
        raise RlcastError(f"{path}: no scalar in its TensorBoard event files ({len(files)} file(s); an empty or corrupt "
                          f"file reads as none)")
    return build(str(path), "TensorBoard log", series, metric, reward, REWARDS, eval_size)
