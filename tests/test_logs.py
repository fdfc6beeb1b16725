"""The logs users have (`rlcast.io.logs.read_log`): every format read from a small file written in it, the real verl
logs, bad files and missing metrics in one line, and `rlcast forecast LOG` end to end."""

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rlcast.errors import RlcastError
from rlcast.forecasting import Curve
from rlcast.io.logs import LogCurve, detect, read_log

VAL = "val/test_score/openai/gsm8k"
OUTSIDE = Path(__file__).resolve().parents[2] / "shared" / "outside-curves"


def truth(step):
    """A real run's shape: a quick rise (the answer format), then a slow creep."""
    return 0.55 - 0.45 * np.exp(-np.asarray(step, dtype=float) / 12.0) + 0.0001 * np.asarray(step, dtype=float)


def verl_lines(steps=60, every=5):
    """verl's console lines: colour codes and Ray's prefix, a step line per step, `val/` every `every` steps, a config
    dump and model output that mentions "step:" in between."""
    prefix = "\x1b[2m\x1b[36m(main_task pid=926049)\x1b[0m "
    out = [prefix + "{'actor_rollout_ref': {'actor': {'clip_ratio': 0.2,", prefix + "Let's solve this step by step:"]
    for s in range(steps):
        pairs = [f"timing/gen:{18 + s % 3:.3f}", f"critic/score/mean:{truth(s) - 0.05:.3f}", "critic/lr(1e-4):0.100"]
        if s % every == every - 1:
            pairs.append(f"{VAL}:{truth(s):.3f}")
        out.append(prefix + f"step:{s} - " + " - ".join(pairs))
    return "\n".join(out) + "\n"


def test_verl_log_with_colour_codes_plain_or_gzipped(tmp_path):
    plain, packed = tmp_path / "run.log", tmp_path / "run.log.gz"
    plain.write_text(verl_lines())
    packed.write_bytes(gzip.compress(verl_lines().encode()))
    log = read_log(plain)
    assert isinstance(log, LogCurve) and log.format == "verl log" and log.metric == VAL
    assert log.steps.tolist() == list(range(4, 60, 5)) and log.accuracy[0] == pytest.approx(truth(4), abs=1e-3)
    assert log.reward_metric == "critic/score/mean" and log.reward_steps.tolist() == list(range(60))
    assert np.isnan(log.sd).all() and log.eval_size is None and log.planned is None
    assert "critic/lr(1e-4)" in log.metrics and "timing/gen" in log.metrics
    again = read_log(packed, eval_size=1319)
    assert again.steps.tolist() == log.steps.tolist() and np.array_equal(again.accuracy, log.accuracy)
    assert again.sd[0] == pytest.approx(np.sqrt(again.accuracy[0] * (1 - again.accuracy[0]) / 1319))
    picked = read_log(plain, metric="critic/score/mean", reward="timing/gen")
    assert len(picked.steps) == 60 and picked.reward_metric == "timing/gen"


def write_state(folder: Path, log_history: list, max_steps: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trainer_state.json"
    path.write_text(json.dumps({"global_step": log_history[-1]["step"], "max_steps": max_steps,
                                "log_history": log_history}))
    return path


def trl_history(last=40, eval_every=10):
    history = []
    for s in range(1, last + 1):
        history.append({"step": s, "epoch": s / 100, "loss": 0.01, "reward": float(truth(s) - 0.1), "reward_std": 0.2})
        if s % eval_every == 0:
            history.append({"step": s, "epoch": s / 100, "eval_accuracy": float(truth(s)), "eval_loss": 0.3,
                            "eval_runtime": 12.5, "eval_samples_per_second": 80.0})
    return history


def test_trl_folder_reads_its_newest_checkpoint_state(tmp_path):
    write_state(tmp_path / "checkpoint-20", trl_history(20))
    write_state(tmp_path / "checkpoint-40", trl_history(40))
    (tmp_path / "checkpoint-60").mkdir()  # a checkpoint still being written: no state yet
    assert detect(tmp_path) == ("trl", tmp_path)
    with pytest.raises(RlcastError, match="several validation metrics in this trainer state "
                                          r"\(eval_accuracy, eval_loss\); pick one with --metric"):
        read_log(tmp_path)  # eval_runtime and eval_samples_per_second time the evaluation: not listed
    log = read_log(tmp_path, metric="eval_accuracy")
    assert log.steps.tolist() == [10, 20, 30, 40] and log.planned == 200
    assert log.reward_metric == "reward" and log.reward_steps.tolist() == list(range(1, 41))
    file = read_log(tmp_path / "checkpoint-20" / "trainer_state.json", metric="eval_accuracy")
    assert file.steps.tolist() == [10, 20]


def test_run_folder_from_run_json_and_its_trainer_state(tmp_path):
    entries = [{"step": s, "path": f"checkpoint-{s}", "accuracy": float(truth(s)),
                "ci": [float(truth(s)) - 0.0392, float(truth(s)) + 0.0392], "train_reward": 0.3} for s in (10, 20, 30)]
    (tmp_path / "run.json").write_text(json.dumps({
        "format": 2, "task": "arith", "base_accuracy": 0.1, "base_ci": [0.08, 0.12], "checkpoints": entries,
        "config": {"steps": 90, "eval_prompts": 500, "num_iterations": 2}}))
    write_state(tmp_path / "checkpoint-30", trl_history(30))
    log = read_log(tmp_path / "run.json")
    assert log.format == "run folder" and log.source == str(tmp_path.resolve()) and log.metric == "accuracy"
    assert log.steps.tolist() == [0, 10, 20, 30] and log.accuracy[0] == 0.1
    assert log.sd[1] == pytest.approx(0.0392 / 1.959963984540054, rel=1e-6)  # from its 95 % interval
    assert log.reward_metric == "reward" and log.reward_steps.tolist() == list(range(1, 31))  # denser than run.json
    assert (log.planned, log.eval_size, log.mu, log.task) == (90, 500, 2, "arith")
    curve = Curve.from_log(log)
    assert curve.run == log.source and curve.eval_prompts == 500 and curve.window(20).reward_steps.max() == 20
    other = read_log(tmp_path, metric="eval_accuracy", reward="train_reward")
    assert other.steps.tolist() == [10, 20, 30] and other.reward_steps.tolist() == [10, 20, 30]


def test_tensorboard_events_read_with_the_tensorboard_reader(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for s in range(1, 31):
        writer.add_scalar("train/reward", float(truth(s) - 0.1), s)
        if s % 5 == 0:
            writer.add_scalar("eval/accuracy", float(truth(s)), s)
    writer.close()
    assert detect(tmp_path / "tb")[0] == "tensorboard"
    log = read_log(tmp_path / "tb", eval_size=200)
    assert log.metric == "eval/accuracy" and log.steps.tolist() == [5, 10, 15, 20, 25, 30]
    assert log.accuracy == pytest.approx(truth(log.steps), abs=1e-6)  # stored as float32
    assert log.reward_metric == "train/reward" and len(log.reward) == 30 and log.eval_size == 200
    (file,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    assert read_log(file).steps.tolist() == log.steps.tolist()


def test_tensorboard_without_the_package_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "tensorboard.backend.event_processing.event_file_loader", None)
    with pytest.raises(RlcastError, match=r"needs the tensorboard package: pip install 'rlcast\[tensorboard\]'$"):
        read_log(tmp_path)


def test_csv_exports_wandb_and_mlflow(tmp_path):
    wandb = tmp_path / "wandb.csv"
    rows = ["_step,val/acc,train/reward,_runtime,run"]
    for s in range(0, 40, 2):
        val = f"{truth(s):.4f}" if s % 8 == 0 else ""  # blank: not logged at that step
        rows.append(f"{s},{val},{truth(s) - 0.1:.4f},{s * 3.5},lr-1e-6")
    wandb.write_text("\n".join(rows) + "\n")
    log = read_log(wandb)
    assert log.format == "CSV export" and log.metric == "val/acc" and log.steps.tolist() == [0, 8, 16, 24, 32]
    assert log.reward_metric == "train/reward" and len(log.reward) == 20 and "run" not in log.metrics
    chart = tmp_path / "chart-export"  # wandb's chart export: no .csv suffix here, `<run> - <metric>` columns
    chart.write_text('"Step","lr1 - val/acc","lr1 - val/acc__MIN","lr1 - val/acc__MAX"\n'
                     + "".join(f"{s},{truth(s):.3f},{truth(s):.3f},{truth(s):.3f}\n" for s in (100, 200, 300)))
    assert detect(chart)[0] == "csv"
    assert read_log(chart, metric="val/acc").steps.tolist() == [100, 200, 300]
    mlflow = tmp_path / "mlflow.csv"
    mlflow.write_text("step,eval_accuracy,eval_runtime\n10,0.3,1.0\n20,0.4,1.0\n30,nan,1.0\n40,0.45,1.0\n")
    assert read_log(mlflow).steps.tolist() == [10, 20, 40]


@pytest.mark.skipif(not OUTSIDE.is_dir(), reason="the real verl logs are not in this checkout")
@pytest.mark.parametrize("name, points, last", [
    ("verl-Qwen2.5-0.5B-bsz256_2-prompt1024-resp512-0.567.log.gz", 43, 0.543),
    ("verl-Qwen2.5-0.5B-bsz256_2-prompt512-resp256-0.538.log.gz", 43, 0.526),
    ("verl-gemma-2-2b-it-ppo-bsz512_4-prompt1024-resp-512-0.640.log.gz", 10, 0.621),
])
def test_the_real_verl_logs(name, points, last):
    log = read_log(OUTSIDE / name)
    assert log.metric == VAL and len(log.steps) == points and log.accuracy[-1] == pytest.approx(last)
    assert log.steps[0] == 9 and np.all(np.diff(log.steps) == 10)
    assert log.reward_metric == "critic/score/mean" and len(log.reward) > 100


def one_line(call, *words):
    with pytest.raises(RlcastError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_bad_files_and_missing_metrics_are_one_line(tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("step by step: nothing logged here\nstep:3 without pairs\n")
    one_line(lambda: read_log(notes), str(notes), "not a log rlcast reads", "it starts with 'step by step")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    one_line(lambda: read_log(binary), str(binary), "not a log rlcast reads")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    one_line(lambda: read_log(tmp_path / "empty"), "no run.json, trainer_state.json", "found: readme.md")
    one_line(lambda: read_log(tmp_path / "missing.log"), "missing.log: no such file or folder")
    log = tmp_path / "verl.log"
    log.write_text(verl_lines())
    one_line(lambda: read_log(log, metric="val/acc"), str(log), "no metric 'val/acc'", "metrics found:", VAL)
    one_line(lambda: read_log(log, reward="score"), "no reward 'score'", "critic/score/mean")
    one_line(lambda: read_log(log, metric="timing/gen"), "timing/gen is 18 at step 0", "not a held-out accuracy")
    one_line(lambda: read_log(log, eval_size=0), "--eval-size 0")
    training_only = tmp_path / "train.log"
    training_only.write_text("step:1 - critic/score/mean:0.2\nstep:2 - critic/score/mean:0.3\n")
    one_line(lambda: read_log(training_only), "no validation metric", "metrics found: critic/score/mean",
             "--metric")
    two = tmp_path / "two.log"
    two.write_text("step:9 - val/a:0.2 - val/b:0.3\n")
    one_line(lambda: read_log(two), "several validation metrics in this verl log (val/a, val/b)")
    nostep = tmp_path / "export.csv"
    nostep.write_text("time,val/acc\n1,0.2\n")
    one_line(lambda: read_log(nostep), "no step column", "columns: time, val/acc")
    badstep = tmp_path / "bad.csv"
    badstep.write_text("step,val/acc\n1.5,0.2\n")
    one_line(lambda: read_log(badstep), "line 2: the step must be a step number", "1.5")
    write_state(tmp_path / "trl", [{"step": "ten", "eval_accuracy": 0.3}])
    one_line(lambda: read_log(tmp_path / "trl"), "log_history[0].step must be a step number", "'ten'")
    write_state(tmp_path / "nan", [{"step": 1, "eval_accuracy": 0.3, "reward": float("nan")}])
    one_line(lambda: read_log(tmp_path / "nan"), "reward is nan at step 1, not a finite number")
    (tmp_path / "tb" / "a").mkdir(parents=True)
    (tmp_path / "tb" / "b").mkdir()
    for sub in ("a", "b"):
        (tmp_path / "tb" / sub / "events.out.tfevents.1.host").write_bytes(b"")
    one_line(lambda: read_log(tmp_path / "tb"), "TensorBoard event files of several runs", "name one folder")
    if importlib.util.find_spec("tensorboard"):
        corrupt = tmp_path / "tb" / "a" / "events.out.tfevents.1.host"
        corrupt.write_bytes(b"not a record" * 50)
        one_line(lambda: read_log(corrupt), str(corrupt), "no scalar in its TensorBoard event files")
    monkeypatch.setattr("rlcast.io.logs.curve.MAX_LINE", 1000)  # memory stays bounded: no line is read whole
    endless = tmp_path / "endless.log"
    endless.write_text("step:1 - " + "x" * 5000)
    one_line(lambda: read_log(endless), str(endless), "line 1 is longer than")


def test_cli_forecast_a_verl_log_end_to_end(tmp_path, run_cli):
    log = tmp_path / "verl.log.gz"
    log.write_bytes(gzip.compress(verl_lines(steps=60).encode()))
    code, out, err = run_cli("forecast", log, "--eval-size", 1319, "--json", tmp_path / "f.json")
    assert code == 0, err
    (r,) = json.loads((tmp_path / "f.json").read_text())["runs"]
    assert r["run"] == str(log) and r["cutoff"] == 59 and r["target_step"] == 2 * 59  # no plan logged
    assert r["combined"]["low"] <= r["combined"]["median"] <= r["combined"]["high"]
    assert abs(r["combined"]["median"] - truth(118)) < 0.1
    assert "alpharl" not in r["forecasters"]  # a log holds no weights: the weight-based forecaster is left out
    assert str(log) in out and "combined" in out

    csv = tmp_path / "other.csv"
    csv.write_text("step," + VAL + "\n" + "".join(f"{s},{truth(s) + 0.05:.4f}\n" for s in range(4, 60, 5)))
    code, out, err = run_cli("forecast", log, csv, "--until", 40, "--target", 100, "--json", tmp_path / "r.json")
    assert code == 0, err
    ranking = json.loads((tmp_path / "r.json").read_text())["ranking"]
    assert ranking["order"] == [str(csv), str(log)]  # the higher curve ranks first, across formats

    code, _, err = run_cli("forecast", log, "--metric", "val/nope")
    assert code == 1 and err.startswith("error:") and "no metric 'val/nope'" in err and VAL in err
    assert err.strip().count("\n") == 0
    code, _, err = run_cli("forecast", log, "--until", 9)
    assert code == 1 and f"{log}: 2 validation point(s) after step 0 up to step 9; forecasting needs at least 3" in err
    code, _, err = run_cli("forecast", log, "--weights")
    assert code == 1 and "--weights needs readable checkpoints (a verl log holds no checkpoints)" in err
    code, _, err = run_cli("forecast", log, "--json", log)
    assert code == 1 and "an input of this command" in err and log.read_bytes()[:2] == b"\x1f\x8b"
