"""Write a Hugging Face model folder from a stream of (name, tensor) pairs, one tensor at a time.

Every model rlcast produces (rank-k models, extrapolated checkpoints) goes through `write_model`: the weights are
cast to the base's dtype and written as (sharded) safetensors next to copies of the base's config, tokenizer,
generation and chat-template files, so the result loads with `AutoModelForCausalLM.from_pretrained`.
The folder is built under a temporary name and renamed into place only when complete.

The rule every output follows lives here too (`check_output`, called by each command before any work): an output never
is, contains or lies inside an input; it replaces only an earlier output of the same rlcast command (recognised by
its record: the MARKER file of a folder, the first key of a result JSON, a stamp in an HTML or PNG file), computed
with the same settings, unless forced; and the folder it goes in must really be writable. Temporaries carry their
host and process id in their name, so a later run sweeps those of killed processes (`sweep`), and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlcast.errors import RlcastError
from rlcast.io.tensors import TensorReader

# Files copied verbatim from the base folder: everything a loader needs besides the weights.
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt",
              "merges.txt", "chat_template.jinja", "chat_template.json")
INDEX = "model.safetensors.index.json"
MARKER = ".rlcast-output"  # in every output folder rlcast writes: its record, {"command": ..., "settings": ...}
RECORD = "rlcast"  # the key of the record in a result JSON (its first key)
STAMP = "rlcast-output"  # the record follows this word in other output files (an HTML comment, a PNG text chunk)


def base_layout(base: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of the base's tensors, in file order, without loading any tensor data."""
    reader = TensorReader(base)
    return {name: (tuple(reader.shape(name)), reader.dtype(name)) for name in reader.names()}


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
    tmp = _temp_path(out.parent, "tmp", f".{out.name}.")
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps(record or output_record(None)) + "\n")
        follow_umask(tmp)
        _replace(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model(base: Path, out: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                dtype: torch.dtype | None = None, metadata: dict | None = None, shard_mb: int = 2000,
                record: dict | None = None, force: bool = False) -> Path:
    """Stream `tensors` into the HF folder `out`; every base tensor exactly once, cast to the base dtype.

    `dtype` overrides the dtype of floating-point tensors. `metadata` (str -> JSON-able) goes into every
    safetensors header. Shards hold at most `shard_mb` MB (a tensor larger than that gets its own shard).
    `record` and `force`: as in `atomic_folder`.
    """
    base, out = Path(base), Path(out)
    if out.resolve() == base.resolve():
        raise RlcastError(f"{out}: refusing to overwrite the base model folder")
    layout = base_layout(base)
    header = {"format": "pt"}
    for key, value in (metadata or {}).items():
        header[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    with atomic_folder(out, record, force) as tmp:
        shards = _write_shards(tmp, tensors, layout, dtype, header, shard_mb * 2**20)
        _name_shards(tmp, shards)
        for file in COPY_FILES:
            if (base / file).is_file():
                shutil.copyfile(base / file, tmp / file)  # content only: the mode follows the umask
    return out


def _write_shards(tmp: Path, tensors, layout, dtype, header, limit: int) -> list[dict[str, int]]:
    """Write shards as tmp/shard-N.safetensors; return per shard {name: nbytes}. Checks names and shapes."""
    seen: set[str] = set()
    shards: list[dict[str, int]] = []
    buffer: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal buffer, size
        if buffer:
            save_file(buffer, str(tmp / f"shard-{len(shards)}.safetensors"), metadata=header)
            shards.append({k: t.numel() * t.element_size() for k, t in buffer.items()})
        buffer, size = {}, 0

    for name, tensor in tensors:
        if name not in layout:
            raise RlcastError(f"tensor {name}: not a tensor of the base model")
        if name in seen:
            raise RlcastError(f"tensor {name}: written twice")
        shape, base_dtype = layout[name]
        if tuple(tensor.shape) != shape:
            raise RlcastError(f"tensor {name}: shape {tuple(tensor.shape)} differs from the base's {shape}")
        target = dtype if dtype is not None and base_dtype.is_floating_point else base_dtype
        tensor = tensor.detach().to("cpu", target).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if buffer and size + nbytes > limit:
            flush()
        buffer[name] = tensor
        size += nbytes
        seen.add(name)
    flush()
    missing = [name for name in layout if name not in seen]
    if missing:
        raise RlcastError(f"tensor {missing[0]}: missing from the written model ({len(missing)} base tensors missing)")
    return shards


def _name_shards(tmp: Path, shards: list[dict[str, int]]) -> None:
    """Rename shards to the HF convention and write the index when there is more than one."""
    if len(shards) == 1:
        (tmp / "shard-0.safetensors").rename(tmp / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, sizes in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (tmp / f"shard-{i}.safetensors").rename(tmp / file)
        weight_map.update({name: file for name in sizes})
        total += sum(sizes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / INDEX).write_text(json.dumps(index, indent=2))


def _replace(tmp: Path, out: Path, force: bool = False) -> None:
    """Move the finished folder into place; an existing `out` is swapped out first, then deleted."""
    if not out.exists() and not out.is_symlink():
        tmp.rename(out)
        return
    if not out.is_dir() or out.is_symlink():
        raise RlcastError(f"{out}: exists and is not a folder")
    if not force and read_record(out) is None and any(out.iterdir()):
        raise RlcastError(f"{out}: exists and was not written by rlcast; pass --force to replace it")
    old = _temp_path(out.parent, "old", f".{out.name}.")
    out.rename(old)
    tmp.rename(out)
    _remove(old)


@contextmanager
def atomic_file(path: Path):
    """Yield a temp path beside `path`; when the block succeeds it is renamed onto `path`, else deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent)
    tmp = _temp_path(path.parent, "tmp", f".{path.name}.")
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


def json_safe(obj):
    """A JSON-safe copy: nan/inf floats become None (JSON has no nan), tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj, indent: int | None = 2, record: dict | None = None) -> Path:
    """`obj` as JSON (non-finite floats as null), written atomically; `record` (`output_record`) goes first."""
    if record is not None:
        obj = {RECORD: record, **obj}
    return write_text_atomic(path, json.dumps(json_safe(obj), indent=indent) + "\n")


# --- the rule for outputs ---

def output_record(command: str | None, settings: dict | None = None) -> dict:
    """What an output says about itself: the rlcast command that wrote it and the settings its content depends on
    (as JSON gives them back, so that a saved record compares equal to a new one)."""
    return {"command": command, "settings": json.loads(json.dumps(json_safe(settings or {}), sort_keys=True))}


def html_record(record: dict) -> str:
    """The record as an HTML comment, for an HTML output ("--" escaped: it would end the comment)."""
    return f"<!-- {STAMP} " + json.dumps(record).replace("--", "-\\u002d") + " -->"


def read_record(path: Path) -> dict | None:
    """The record of an output rlcast wrote (a folder's MARKER, a JSON's RECORD key, a stamp), else None."""
    path = Path(path)
    try:
        if path.is_dir():
            record = json.loads((path / MARKER).read_text())
        elif path.suffix == ".json":
            record = json.loads(path.read_text()).get(RECORD)
        else:
            with path.open("rb") as f:
                head = f.read(1 << 16)
            at = head.find(STAMP.encode())
            if at < 0:
                return None
            record, _ = json.JSONDecoder().raw_decode(head[at + len(STAMP) + 1:].decode("latin-1"))
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and "command" in record else None


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
    probe = _temp_path(folder, "probe", ".")
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


# --- temporaries: named after their process, swept when it is gone ---

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEMP = re.compile(r"^(?P<prefix>.*?)rlcast-(?P<kind>[a-z]+)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}$")


def _temp_path(folder: Path, kind: str, prefix: str = "") -> Path:
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


def _remove(path: Path) -> None:
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
            _remove(path)


@contextmanager
def scratch_dir(purpose: str, run=None):
    """A private folder in the system temp dir (TMPDIR), deleted when the block ends (also on SIGTERM and SIGINT:
    the CLI turns them into exceptions); leftovers of killed processes are swept first. With `run` (a Run or a list),
    the folder follows the rule for outputs (`check_output`): a TMPDIR inside the run's checkpoints or base is
    refused before any work."""
    root = Path(tempfile.gettempdir())
    path = _temp_path(root, purpose)
    if run is not None:
        check_output(path, purpose, folder=True, run=run, replaces=False, option="TMPDIR=DIR")
    sweep(root)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
