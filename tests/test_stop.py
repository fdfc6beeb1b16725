"""The stop rule: `ForecastCallback` ends a planted flat run early and leaves a rising one alone, driven through the
trainer's own CallbackHandler with synthetic evaluations (no training); a failing forecast never ends a run; the
`--stop` line and `--stop --follow` on a growing verl log."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

from rlcast.errors import RlcastError
from rlcast.forecasting import Combination, Curve
from rlcast.forecasting.stop import decide
from rlcast.training import ForecastCallback

STEPS = np.arange(20, 320, 20)
PLANNED = 300
LINE = re.compile(r"^(stop|continue): [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] expected by step \d+, "
                  r"(below --min-gain 0\.01|P\(gain >= 0\.01\) = \d\.\d\d)$")


def flat(step):
    """The format jump, then a plateau (a real run's shape)."""
    return 0.55 - 0.5 * np.exp(-np.asarray(step, dtype=float) / 12.0)


def rising(step):
    return 0.15 + 0.0012 * np.asarray(step, dtype=float)


class Recorder(TrainerCallback):
    """A logger standing where report_to's integrations stand: every logs dict it is sent."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def drive(truth, tmp_path, stop=True, metric="eval_accuracy", value=None, named=None, seed=0):
    """Evaluations of a planted curve (scored on 2000 prompts) through a CallbackHandler: (callback, recorder, the
    step training stopped at or None, whether a checkpoint was asked for there)."""
    rng = np.random.default_rng(seed)
    callback = ForecastCallback(stop=stop, eval_size=2000, metric=named, model=Combination(samples=200), verbose=False)
    recorder = Recorder()
    handler = CallbackHandler([DefaultFlowCallback(), recorder], None, None, None, None)  # report_to's place
    callback.bind(SimpleNamespace(callback_handler=handler))  # added after the loggers, as a user's callback is
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(max_steps=PLANNED), TrainerControl()
    for step in STEPS:
        state.global_step = int(step)
        state.log_history.append({"reward": float(truth(step) + rng.normal(0, 0.01)), "step": int(step)})
        score = value if value is not None else rng.binomial(2000, truth(step)) / 2000
        handler.on_evaluate(args, state, control, metrics={metric: score, "eval_loss": 0.3, "eval_runtime": 1.0})
        if control.should_training_stop:
            return callback, recorder, int(step), control.should_save
    return callback, recorder, None, False


def test_callback_ends_a_flat_run_early_and_logs_through_the_trainers_loggers(tmp_path):
    callback, recorder, stopped, saved = drive(flat, tmp_path)
    assert stopped is not None and stopped <= 0.6 * PLANNED and saved  # ended on a checkpoint, well before the end
    assert callback.stopped_at == stopped and callback.decisions[-1].stop and not callback.failures
    sent = [logs for step, logs in recorder.logs if step == stopped]
    assert sent and set(sent[-1]) == {"forecast/final", "forecast/low", "forecast/high", "forecast/p_gain",
                                      "forecast/stop"}
    assert sent[-1]["forecast/low"] <= sent[-1]["forecast/final"] <= sent[-1]["forecast/high"]
    assert abs(sent[-1]["forecast/final"] - flat(PLANNED)) < 0.04 and sent[-1]["forecast/p_gain"] < 0.3
    assert len(recorder.logs) == len(callback.decisions)  # one logs dict per forecast, each at its own step


@pytest.mark.slow
def test_callback_leaves_a_rising_run_alone(tmp_path):
    callback, recorder, stopped, _ = drive(rising, tmp_path)
    assert stopped is None and callback.stopped_at is None and not callback.failures
    assert len(callback.decisions) == len(STEPS) - 2  # every evaluation from the third on was forecast
    assert all(not d.stop for d in callback.decisions[:-1]) and callback.decisions[-2].p_gain > 0.5
    without = drive(flat, tmp_path, stop=False)
    assert without[2] is None and any(d.stop for d in without[0].decisions)  # stop=False: forecasts only


def test_a_failing_forecast_is_logged_and_skipped(tmp_path, caplog):
    callback, recorder, stopped, _ = drive(flat, tmp_path, value=5.0, named="accuracy")  # not an accuracy
    assert stopped is None and not callback.decisions and not recorder.logs
    assert len(callback.failures) == len(STEPS) and "not a held-out accuracy in [0, 1]" in callback.failures[0]
    assert "forecast skipped at step 20" in caplog.text
    two = ForecastCallback(verbose=False)
    handler = CallbackHandler([DefaultFlowCallback(), two], None, None, None, None)
    args, state, control = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerState(), \
        TrainerControl()
    handler.on_evaluate(args, state, control, metrics={"eval_accuracy": 0.5, "eval_reward": 0.4})
    assert "several eval metrics" in two.failures[0] and not control.should_training_stop
    with pytest.raises(RlcastError, match="min_gain|--min-gain"):
        ForecastCallback(min_gain=-1)


def test_callback_reads_rlcast_runs_from_run_json(tmp_path):
    """rlcast train: ManifestCallback has just scored the checkpoint into run.json when on_save comes."""
    rng = np.random.default_rng(1)
    entries = []
    callback = ForecastCallback(stop=True, model=Combination(samples=200), verbose=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(max_steps=1000), TrainerControl()
    handler = CallbackHandler([DefaultFlowCallback(), callback], None, None, None, None)
    for step in STEPS:
        acc = rng.binomial(1000, flat(step)) / 1000
        entries.append({"step": int(step), "path": f"checkpoint-{step}", "accuracy": acc,
                        "ci": [acc - 0.03, acc + 0.03], "train_reward": None})
        (tmp_path / "run.json").write_text(json.dumps({
            "format": 2, "base": "base", "task": "arith", "base_accuracy": 0.05, "base_ci": [0.04, 0.07],
            "config": {"steps": PLANNED, "eval_prompts": 1000}, "checkpoints": entries, "status": "running"}))
        state.global_step = int(step)
        handler.on_save(args, state, control)
        if control.should_training_stop:
            break
    assert callback.stopped_at is not None and callback.stopped_at < PLANNED and not callback.failures
    assert callback.decisions[-1].target == PLANNED  # run.json's planned steps, not the trainer's max_steps


def test_decision_line_format():
    steps = np.arange(0, 160, 10)
    curve = Curve("planted", steps, flat(steps), np.full(len(steps), 0.011), eval_prompts=2000)
    made = decide(curve, 300)
    assert LINE.match(made.line()) and made.line().startswith("stop:") and made.target == 300
    climbing = Curve("planted", steps, rising(steps), np.full(len(steps), 0.011), eval_prompts=2000)
    assert decide(climbing, 300).line().startswith("continue:")
    with pytest.raises(RlcastError, match="before the cutoff"):
        decide(curve, 100)


def test_no_stop_in_a_dip():
    """A run whose last scores sit well below its best (a crash it may recover from) is no plateau: the forecast of
    no gain from here does not stop it; the same scores without the earlier best do."""
    from rlcast.forecasting.stop import in_dip

    steps = np.arange(10, 160, 10)
    level = np.array([0.30, 0.32, 0.33, 0.34, 0.35, 0.35, 0.35, 0.35, 0.36, 0.35, 0.30, 0.27, 0.26, 0.26, 0.26])
    dip = Curve("dip", steps, level, np.full(len(steps), 0.015), eval_prompts=1000)
    assert in_dip(dip) and not decide(dip, 300).stop
    flat_low = Curve("low", steps, np.full(len(steps), 0.26) + 0.001 * (np.arange(len(steps)) % 2),
                     np.full(len(steps), 0.014), eval_prompts=1000)
    assert not in_dip(flat_low) and decide(flat_low, 300).stop


def test_hindsight_replays_the_forecast_and_the_stop_rule_on_a_finished_run():
    """The demo's last word: on a plateau the rule stops early for almost nothing; on a climb it never stops."""
    from rlcast.apps.stopping import hindsight, hindsight_lines

    rng = np.random.default_rng(0)
    steps = np.arange(0, 310, 10)

    def planted(truth):
        acc = rng.binomial(2000, truth(steps)) / 2000
        return Curve("planted", steps, acc, np.sqrt(acc * (1 - acc) / 2000), eval_prompts=2000)

    told = hindsight(planted(flat))
    assert told["cutoff"] == 120 and told["target"] == 300 and told["stop"] is not None
    assert told["stop"]["step"] < 300 and told["stop"]["saved"] >= 0.3 and abs(told["stop"]["lost"]) < 0.02  # 3 sd of two 3-score means
    assert told["forecast"]["low"] <= told["final"] <= told["forecast"]["high"]
    lines = hindsight_lines(told, unit="batch")
    assert lines[0].startswith("forecast from batch 120 of 300: ") and lines[1].startswith("stop rule: stop at batch")
    climb = hindsight(planted(rising))
    assert climb["stop"] is None and abs(climb["final"] - rising(300)) < 0.03
    assert hindsight_lines(climb)[1].endswith("continue at every validation")


def test_cli_stop_ends_with_one_line(tmp_path, run_cli):
    from test_forecast import write_run

    run = write_run(tmp_path / "run", weights=False)
    code, out, err = run_cli("forecast", run, "--no-weights", "--stop")
    assert code == 0, err
    assert LINE.match(out.strip().splitlines()[-1]), out.strip().splitlines()[-1]
    code, _, err = run_cli("forecast", run, "--follow")
    assert code == 2 and "--stop missing" in err


def verl_line(step, score):
    return f"\x1b[36m(main_task pid=1)\x1b[0m step:{step} - critic/score/mean:{score:.3f} - " \
           f"val/test_score/openai/gsm8k:{score:.3f}\n"


@pytest.mark.slow
def test_follow_prints_a_decision_at_each_new_validation(tmp_path):
    from rlcast.apps.stopping import follow

    log = tmp_path / "verl.log"
    log.write_text("starting\n")
    scores = iter([(int(s), float(flat(s))) for s in STEPS])
    said, reads = [], []

    def grow(_seconds):  # the trainer writes its next validation between two reads
        reads.append(1)
        step, score = next(scores)
        with log.open("a") as f:
            f.write(verl_line(step, score))

    last = follow(log, target=PLANNED, eval_size=1319, poll=0, say=said.append, sleep=grow)
    decisions = [line for line in said if line.startswith("step ")]
    assert said[0].startswith("waiting for validation scores")  # a live log before its 3rd validation
    assert len(decisions) == len(STEPS) - 2 and decisions[0].startswith("step 60: ")
    assert all(LINE.match(line.split(": ", 1)[1]) for line in decisions)
    assert last is not None and last.cutoff == PLANNED  # ended at the planned last step
