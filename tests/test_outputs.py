"""What every command may write: never over an input, over an earlier output of its own only (and for a result only
with the same settings), nowhere it cannot write (checked before any work), with modes that follow the umask, and
without leaving temporaries behind, even when killed."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from rlcast.apps import dominance as dominance_app
from rlcast.apps.dominance import DominanceResult
from rlcast.evaluation.scoring import Score
from rlcast.io import temporaries, writer
from rlcast.io.atomic import atomic_folder, write_json_atomic
from rlcast.io.checkpoints import load_run
from rlcast.io.outputs import scratch_dir
from rlcast.io.records import MARKER
from rlcast.io.synthetic import planted_run
from rlcast.io.writer import base_layout, write_model


@pytest.fixture()
def run(tmp_path):
    """A tiny planted run (no tokenizer: the commands below must stop before any model is loaded)."""
    return planted_run(tmp_path / "run", steps=[10, 20, 30, 40], hidden=32, layers=1)


def files(folder):
    """{path: (size, mtime)} of everything under `folder`: to check that a command left it alone."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def stream(base):
    """The base's own tensors, as write_model takes them."""
    with safe_open(str(base / "model.safetensors"), "pt") as f:
        yield from ((name, f.get_tensor(name)) for name in base_layout(base))


def one_line_error(result, *fragments):
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


EXTRAPOLATE = ["extrapolate", "{run}", "-m", "weight-linear", "--until", "20", "--target", "40"]


@pytest.mark.parametrize("args, fragment", [
    (EXTRAPOLATE + ["--out", "{run}"], "{run}: is the run folder, an input"),
    (EXTRAPOLATE + ["--out", "{run}/checkpoint-30", "--force"], "is checkpoint 30, an input"),
    (EXTRAPOLATE + ["--out", "{run}/base", "--force"], "is the base model, an input"),
    (EXTRAPOLATE + ["--out", "{run}/..", "--force"], "contains the run folder"),
    (EXTRAPOLATE + ["--out", "{run}/checkpoint-30/pred"], "is inside checkpoint 30"),
    (["compare", "{run}", "--task", "arith", "--out", "{run}/checkpoint-30", "--force"], "is checkpoint 30, an input"),
    (["compare", "{run}", "--task", "arith", "--out", "{run}"], "is the run folder, an input"),
    (["compare", "{run}", "--task", "arith", "--out", "{run}/.."], "contains the run folder"),
    (["dominance", "{run}", "--task", "arith", "--json", "{run}/base/config.json", "--force"], "inside the base"),
    (["dominance", "{run}", "--task", "arith", "--keep-models", "{run}/base", "--force"], "is the base model"),
    (["dynamics", "{run}", "--json", "{run}/checkpoint-10/config.json", "--force"], "is inside checkpoint 10"),
    (["analyze", "{run}", "--out", "{run}/checkpoint-40"], "is inside checkpoint 40"),
    (["analyze", "{run}", "--cache-dir", "{run}/checkpoint-40/cache"], "is inside checkpoint 40"),
    (["report", "{run}", "--out", "{run}/base/report.html", "--force"], "is inside the base model"),
    (["eval", "{run}/checkpoint-10", "--json", "{run}/checkpoint-10/eval.json"], "is inside the model"),
    (["train", "--model", "{run}/base", "--out", "{run}/base/grpo"], "is inside the base model"),
    (["continue", "{run}", "--at", "10", "--steps", "20", "--weights", "{run}/checkpoint-20", "--optimizer", "fresh",
      "--out", "{run}/continued"], "is inside the source run"),
])
def test_no_output_replaces_or_enters_an_input(run, run_cli, args, fragment):
    (run / "run.json").write_text(json.dumps({"format": 2, "config": {}, "base": str(run / "base"),
                                              "checkpoints": [{"step": s, "path": f"checkpoint-{s}"}
                                                              for s in (10, 20, 30, 40)]}))
    (run / "checkpoint-10" / "trainer_state.json").write_text("{}")
    before = files(run)
    one_line_error(run_cli(*(a.format(run=run) for a in args)), fragment.format(run=run))
    assert files(run) == before


def test_an_output_replaces_only_an_earlier_output_of_its_command(run, tmp_path, run_cli):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    extrapolate = [a.format(run=run) for a in EXTRAPOLATE]
    one_line_error(run_cli(*extrapolate, "--out", mine), f"{mine}: exists and was not written by rlcast extrapolate",
                   "--force")
    assert (mine / "notes.txt").read_text() == "keep me"

    pred = tmp_path / "pred"
    for _ in range(2):  # the second run replaces the first one's output: rlcast extrapolate wrote it
        code, _, err = run_cli(*extrapolate, "--out", pred)
        assert code == 0, err
    assert json.loads((pred / MARKER).read_text())["command"] == "extrapolate"
    one_line_error(run_cli("dominance", run, "--task", "arith", "--keep-models", pred),
                   "was written by rlcast extrapolate, not rlcast dominance")
    with pytest.raises(writer.RlcastError, match="mine: exists and was not written by rlcast"):  # library callers too
        write_model(run / "base", mine, stream(run / "base"))
    code, _, err = run_cli(*extrapolate, "--out", mine, "--force")
    assert code == 0 and not (mine / "notes.txt").exists() and (mine / "model.safetensors").exists(), err


def test_a_result_with_other_settings_is_not_replaced_silently(run, run_cli):
    saved = run / "rlcast" / "analysis.json"
    assert run_cli("analyze", run, "--rank", "2")[0] == 0
    first = saved.read_text()
    one_line_error(run_cli("analyze", run), f"{saved}: holds the result of rlcast analyze with other settings (rank 2 "
                                            f"-> 1)", "--force")
    assert saved.read_text() == first
    assert run_cli("analyze", run, "--force")[0] == 0 and json.loads(saved.read_text())["rank"] == 1
    assert run_cli("analyze", run)[0] == 0  # the same settings: recomputed in place

    # a 1000-prompt dominance.json is not replaced by a 100-prompt one (nor read by the report as if nothing happened)
    score = Score("base", None, 0.5, 0.4, 0.6, [0.5] * 4)
    loaded = load_run(run)
    DominanceResult(str(run), 40, "arith", 1000, "blocks", True, 0, score, score, [], [],
                    settings=dominance_app.settings(loaded, task="arith", n_prompts=1000)).save(
        run / "rlcast" / "dominance.json")
    one_line_error(run_cli("dominance", run, "--task", "arith", "--n-prompts", "100"),
                   "dominance.json: holds the result of rlcast dominance with other settings (n_prompts 1000 -> 100)")


def read_only(monkeypatch, folder):
    """Refuse to create anything under `folder`, as a read-only mount does, for root too (who ignores modes)."""
    inside = str(folder.resolve())
    real_open, real_mkdir = os.open, os.mkdir

    def refused(path):
        path = os.path.abspath(os.fspath(path))
        return path == inside or path.startswith(inside + os.sep)

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and refused(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if refused(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("args, hint", [
    (["analyze", "{run}"], "--out DIR"),
    (["dynamics", "{run}"], "--json FILE"),
    (["dominance", "{run}", "--task", "arith"], "--json FILE"),
    (["compare", "{run}", "--task", "arith"], "--out DIR"),
    (["report", "{run}"], "--out FILE"),
    (["train", "--out", "{run}/grpo"], "--out DIR"),
    (["demo", "--out", "{run}/demo"], "--out DIR"),
])
def test_a_read_only_run_fails_before_any_work_and_says_where_to_write(run, tmp_path, monkeypatch, run_cli, args,
                                                                        hint):
    before = files(run)
    read_only(monkeypatch, run)
    one_line_error(run_cli(*(a.format(run=run) for a in args)), f"{run}: not writable (Read-only file system); "
                                                                f"write elsewhere with {hint}")
    assert files(run) == before
    if args[0] == "analyze":  # elsewhere it works, with the spectra cached in the home folder
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        code, _, err = run_cli("analyze", run, "--out", tmp_path / "out")
        assert code == 0 and (tmp_path / "out" / "analysis.json").exists(), err
        assert any((tmp_path / "home" / ".cache" / "rlcast").iterdir()) and files(run) == before


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_remove_the_temporaries(run, tmp_path, run_cli, monkeypatch, sig, code):
    """Stopped while writing its first kept model: no half-written folder beside it, no scratch folder in TMPDIR."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))

    def stop(*args, **kwargs):
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal did not interrupt the command")

    def unhandled(*args):
        raise AssertionError("rlcast left SIGTERM to its caller")

    monkeypatch.setattr(writer, "_write_shards", stop)
    previous = signal.signal(signal.SIGTERM, unhandled)
    # Python's own Ctrl-C handler, as a fresh `rlcast` process has it (an earlier test's ray.init may have replaced it)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = run_cli("compare", run, "--task", "arith", "--methods", "weight-linear", "--keep", "--out",
                       tmp_path / "cmp")
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    assert done[0] == code and ("terminated" if sig == signal.SIGTERM else "interrupted") in done[2], done
    assert not [p for p in scratch.iterdir() if p.name.startswith("rlcast-")]  # the rlcast-compare-* folder
    assert [p.name for p in (tmp_path / "cmp" / "models").iterdir()] == [MARKER]  # no .real-0.rlcast-tmp-* folder


KILL = """
import os, signal, sys
from pathlib import Path
from rlcast.io.atomic import atomic_file, atomic_folder
from rlcast.io.outputs import scratch_dir

folder = Path(sys.argv[1])
with atomic_folder(folder / "model") as tmp, atomic_file(folder / "result.json") as part, scratch_dir("compare"):
    (tmp / "half.safetensors").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_temporaries_of_killed_processes_are_swept_and_nothing_else(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", KILL, str(out)], env={**os.environ, "TMPDIR": str(scratch)})
    assert killed.wait(timeout=120) == -signal.SIGKILL
    left = sorted(p.name for p in [*out.iterdir(), *scratch.iterdir()])
    assert len(left) == 3 and all(f"-{killed.pid}-" in name for name in left), left  # named after their process
    # a replacement cut between its two renames: the old copy is back under its name
    old = out / f".final.rlcast-old-{temporaries._HOST}-{killed.pid}-0123abcd"
    old.mkdir()
    (old / "model.safetensors").write_text("previous")
    alive = out / f".other.rlcast-tmp-{temporaries._HOST}-{os.getpid()}-0123abcd"  # a process still writing
    unrelated = [out / ".model.tmp-x1y2", out / "notes.txt", scratch / "rlcast-compare-1"]
    for path in [alive, *unrelated]:
        path.write_text("x")

    write_json_atomic(out / "result.json", {"ok": True})
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with scratch_dir("dominance") as mine:
        assert mine.parent == scratch
    assert sorted(p.name for p in out.iterdir()) == sorted([alive.name, "final", "notes.txt", ".model.tmp-x1y2",
                                                            "result.json"])
    assert (out / "final" / "model.safetensors").read_text() == "previous"
    assert [p.name for p in scratch.iterdir()] == ["rlcast-compare-1"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_output_modes_follow_the_umask(tmp_path, mask):
    from rlcast.io.synthetic import tiny_llama

    base = tiny_llama(tmp_path / "base", hidden=32, layers=1, vocab=32)
    before = os.umask(mask)
    try:
        result = write_json_atomic(tmp_path / "results" / "r.json", {"x": 1})
        model = write_model(base, tmp_path / "model", stream(base))
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "sub").mkdir()
            torch.save({"x": torch.ones(1)}, tmp / "sub" / "t.pt")
    finally:
        os.umask(before)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(result) == 0o666 & ~mask and mode(result.parent) == 0o777 & ~mask
    for path in [model, tmp_path / "folder", tmp_path / "folder" / "sub"]:
        assert mode(path) == 0o777 & ~mask, path
    for path in [model / "model.safetensors", model / "config.json", model / MARKER, tmp_path / "folder" / "sub" /
                 "t.pt"]:
        assert mode(path) == 0o666 & ~mask, path
