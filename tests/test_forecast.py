"""`rlcast forecast`: forecasters recover planted curves, their intervals cover, the combination never reads past the
cutoff, the command end to end on a tiny run it builds, and the bad inputs that fail in one line before any fit."""

import json
from pathlib import Path

import numpy as np
import pytest

from rlcast.errors import RlcastError
from rlcast.forecasting import Combination, Curve, Forecaster, make_forecaster, read_curve
from rlcast.forecasting.combine import ALONGSIDE, MEMBERS
from rlcast.io.checkpoints import load_run

A, R0, C_MID, B = 0.5, 0.26, 80.0, 1.0
STEPS = np.arange(0, 310, 10)


def sigmoid(x, a=A, r0=R0, c=C_MID, b=B):
    return a - (a - r0) / (1 + (np.asarray(x, dtype=float) / c) ** b)


def planted(seed=0, prompts=1000, reward_noise=0.005, truth=sigmoid) -> Curve:
    """A held-out curve scored on `prompts` prompts (binomial noise) and a denser reward log, every 5 steps."""
    rng = np.random.default_rng(seed)
    true = truth(STEPS)
    acc = rng.binomial(prompts, true) / prompts
    reward_steps = np.arange(5, 305, 5, dtype=float)
    reward = 0.1 + 0.8 * (truth(reward_steps) - R0) + rng.normal(0, reward_noise, len(reward_steps))
    return Curve("planted", STEPS, acc, np.sqrt(true * (1 - true) / prompts), reward_steps, reward, "arith", 300,
                 prompts)


def test_forecasters_recover_a_planted_sigmoid():
    curve = planted(prompts=200_000, reward_noise=0.0005).window(120)
    sig = make_forecaster("sigmoid", samples=50).fit(curve)
    c_mid, b = np.exp(sig.fit_.theta) * [curve.last, 1]
    assert c_mid == pytest.approx(C_MID, rel=0.2) and b == pytest.approx(B, rel=0.15)
    assert sig.predict([300]).center[0] == pytest.approx(sigmoid(300), abs=0.005)
    assert sig.predict([np.inf]).center[0] == pytest.approx(A, abs=0.03)  # the asymptote
    reward = make_forecaster("reward", shape="sigmoid", samples=50).fit(curve)
    assert reward.predict([300]).center[0] == pytest.approx(sigmoid(300), abs=0.01)
    both = Combination([make_forecaster("sigmoid"), make_forecaster("reward", shape="sigmoid"), "log-linear"],
                       samples=50).fit(curve)
    assert both.predict([300]).center[0] == pytest.approx(sigmoid(300), abs=0.01)
    assert both.weights_["sigmoid"] > both.weights_["log-linear"]  # the back-test prefers the right shape


@pytest.mark.parametrize("name,truth,n", [("power", lambda x: 0.26 + 0.05 * (np.asarray(x) / 60.0) ** 0.4, 60),
                                          ("sigmoid", sigmoid, 24)])
def test_intervals_cover_at_the_stated_rate(name, truth, n):
    """The 90 % interval of a checkpoint's score at step 300, forecast from step 150, over planted noisy curves."""
    inside = []
    for seed in range(n):
        curve = planted(seed, truth=truth)
        f = make_forecaster(name, samples=100, seed=seed).fit(curve.window(150))
        _, low, high = f.predict([300]).interval(0.9)
        inside.append(low[0] <= curve.accuracy[-1] <= high[0])
    assert 0.75 <= np.mean(inside) <= 1.0, np.mean(inside)


def test_an_unstable_run_gets_wider_intervals_and_a_warning():
    """Scores that scatter from checkpoint to checkpoint 5x beyond their evaluation noise (a policy swinging, not the
    prompts) widen every interval of a future checkpoint's score, and the forecast says so; a steady run is not
    flagged (its swing stays within the evaluation noise)."""
    from rlcast.apps.forecast import forecast_curve

    steady = planted(3).window(150)
    scatter = np.random.default_rng(3).normal(0, 5 * steady.evaluation_noise(steady.accuracy))
    shaky = Curve("shaky", steady.steps, steady.accuracy + np.where(steady.steps > 0, scatter, 0.0), steady.sd,
                  steady.reward_steps, steady.reward, "arith", 300, 1000)
    assert steady.swing() <= 1.2 * np.median(steady.evaluation_noise(steady.accuracy)) < shaky.swing()
    calm, wild = forecast_curve(steady, 300), forecast_curve(shaky, 300)
    assert calm.unstable is None and wild.unstable.startswith("unstable: its scores swing")
    width = lambda r: r.combined["high"] - r.combined["low"]  # noqa: E731
    assert width(wild) > 1.5 * width(calm)
    assert shaky.noise(np.array([0.4]))[0] == pytest.approx(shaky.swing())  # the scatter, not the binomial 0.015


class Spy(Forecaster):
    """A user's own forecaster: a flat line at the last accuracy, recording every curve it is fitted on."""

    seen: list = []

    def __init__(self, samples: int = 0, seed: int = 0):
        super().__init__(samples, seed)

    def _fit(self, curve):
        Spy.seen.append((curve.last, curve.reward_steps.max(initial=0)))
        self.level_ = float(curve.accuracy[-1])

    def _curves(self, steps):
        return np.full(len(steps), self.level_), np.zeros((0, len(steps)))


def test_combination_never_uses_data_past_the_cutoff():
    curve = planted(3)
    Spy.seen = []
    model = Combination([Spy(), "power", "sigmoid"], samples=50).fit(curve.window(120))
    assert Spy.seen[0] == (120, 120)  # the member's own fit: the whole window
    origins = [last for last, _ in Spy.seen[1:]]
    assert origins == [30, 40, 50, 60, 70, 80, 90, 100, 110]  # the back-test: every earlier origin, fitted up to it
    assert all(r <= last for last, r in Spy.seen)
    assert {t for t, _ in model.backtest_["Spy"]["pairs"]} == set(origins)
    assert max(j for _, j in model.backtest_["power"]["pairs"]) == 120
    poisoned = Curve(curve.run, curve.steps, np.where(curve.steps > 120, 1.0, curve.accuracy), curve.sd,
                     curve.reward_steps, np.where(curve.reward_steps > 120, -5.0, curve.reward), curve.task,
                     curve.planned, curve.eval_prompts)
    again = Combination([Spy(), "power", "sigmoid"], samples=50).fit(poisoned.window(120))
    assert again.weights_ == model.weights_ and again.s_ == model.s_ and again.growth_ == model.growth_
    first, second = model.predict([200, 300]), again.predict([200, 300])
    assert np.array_equal(first.paths, second.paths) and np.array_equal(first.center, second.center)


def jump_then_creep(seed=0, prompts=1319, steps=np.arange(10, 440, 10)):
    """A real run's shape (the verl logs of issue 29): the answer format learnt in 30 steps (0.01 -> 0.46), then a
    creep to 0.55 by step 430, scored on `prompts` prompts."""
    rng = np.random.default_rng(seed)
    x = steps.astype(float)
    true = np.where(x <= 30, 0.01 + 0.45 * (x / 30) ** 3, 0.46 + 0.09 * (1 - (x / 30) ** -0.8) / (1 - (430 / 30) ** -0.8))
    acc = rng.binomial(prompts, true) / prompts
    return Curve("jump", steps, acc, np.sqrt(true * (1 - true) / prompts), eval_prompts=prompts), true


def test_knee_is_the_end_of_the_format_jump_and_absent_on_a_steady_climb():
    from rlcast.forecasting import knee

    curve, _ = jump_then_creep()
    assert 30 <= knee(curve.window(120)) <= 50
    steady = planted(0, truth=lambda x: 0.26 + 0.0008 * np.asarray(x, dtype=float))
    assert knee(steady) == 0  # one slope: no knee, the fits read every point
    # the testbed's climb with a local plateau (0.26 -> 0.40 by step 70, flat to 140; ~9 sd of its 1000-prompt
    # evaluation): no format jump, so the back-test still sees the climb before the plateau
    x = np.arange(0, 150, 10)
    pause = 0.26 + 0.14 * np.minimum(x, 70) / 70
    paused = Curve("pause", x, pause, np.sqrt(pause * (1 - pause) / 1000), eval_prompts=1000)
    assert knee(paused) == 0


def test_gain_spreads_by_the_error_the_horizon_adds():
    """A path's error at the cutoff is shared by its later steps, the horizon adds its own: the gain from the cutoff
    to a later step spreads by sqrt(sd_T^2 - sd_c^2), not by sd_T - sd_c (which made a plateau's gain look certain)."""
    model = Combination(samples=4000).fit(planted(0).window(150))
    paths = model.predict([150, 300]).paths
    sd_c, sd_t = paths.std(0)
    assert sd_t > sd_c > 0
    assert np.std(paths[:, 1] - paths[:, 0]) == pytest.approx(np.sqrt(sd_t ** 2 - sd_c ** 2), rel=0.1)


def test_the_format_jump_is_no_swing():
    """A real run's jump is not checkpoint-to-checkpoint scatter: no unstable flag, and a future checkpoint's noise
    is one evaluation's, not the jump's."""
    from rlcast.apps.forecast import instability

    curve = jump_then_creep(2)[0].window(200)
    assert curve.swing() > 0.03  # the jump alone, read as swing
    assert instability(curve) is None
    noise = make_forecaster("flat").fit(curve).predict([430]).noise[0]
    assert noise == pytest.approx(curve.evaluation_noise(np.array([curve.accuracy[-3:].mean()]))[0], rel=0.3)


def test_flat_and_ceiling_on_a_plateau_after_the_jump():
    """"No further gain" is the mean of the last 3 scores; the ceiling reads the recent creep, not the jump, and
    forecasts the end of a real run's shape better than no further change from 20 % of it."""
    curve, true = jump_then_creep(3)
    window = curve.window(90)
    flat = make_forecaster("flat", samples=400).fit(window)
    assert flat.predict([430]).center[0] == pytest.approx(window.accuracy[-3:].mean())
    spread = flat.predict([430]).paths[:, 0].std()
    assert spread == pytest.approx(np.sqrt((window.sd[-3:] ** 2).sum()) / 3, rel=0.15)
    ceiling = make_forecaster("ceiling", samples=400).fit(window)
    late = ceiling.predict([430, np.inf])
    assert abs(late.center[0] - true[-1]) < abs(flat.predict([430]).center[0] - true[-1])
    assert abs(late.center[0] - true[-1]) < 0.03 and late.center[0] <= late.center[1] < 1  # it levels off
    assert make_forecaster("ceiling", alpha=0.5).fit(window).predict([430]).center[0] > late.center[0]
    for bad in ({"alpha": 0}, {"recent": 1.5}):
        with pytest.raises(RlcastError, match="ceiling"):
            make_forecaster("ceiling", **bad)


def test_combination_is_never_worse_than_its_best_member_on_its_back_test():
    for curve in (jump_then_creep(1)[0].window(170), planted(2).window(150)):
        model = Combination(samples=50).fit(curve)
        members = [k for k in model.mse_ if k != "combined"]
        assert model.chosen_ == "combined" or model.weights_[model.chosen_] == 1.0
        own = model.mse_["combined"] if model.chosen_ == "combined" else model.mse_[model.chosen_]
        assert own <= min(model.mse_[k] for k in members) + 1e-12
        weighted = Combination(samples=50, select=False).fit(curve)
        assert weighted.chosen_ == "combined"


class Counting(Forecaster):
    """Counts its fits and the points each one saw: a flat line at the mean of the last 3."""

    fits: list = []

    def __init__(self, samples: int = 0, seed: int = 0):
        super().__init__(samples, seed)

    def _fit(self, curve):
        Counting.fits.append(len(curve.steps) + len(curve.reward))
        self.level_ = float(curve.accuracy[-3:].mean())

    def _curves(self, steps):
        return np.full(len(steps), self.level_), np.zeros((0, len(steps)))


def test_backtest_cost_is_flat_in_the_number_of_points():
    """Issue 27: the back-test fitted every origin against every later step (O(n^2) x paths). Origins and scored steps
    are capped and every fit sees at most MAX_POINTS pooled scores and as many rewards: the same number of fits, of
    the same size, at 100 and at 20 000 points."""
    from rlcast.forecasting.base import MAX_POINTS
    from rlcast.forecasting.combine import MAX_ORIGINS, MAX_SCORED

    counts = {}
    for n in (100, 20_000):
        steps = np.arange(0, n + 1)
        true = 0.6 - 0.35 / (1 + steps / (0.1 * n))
        curve = Curve("long", steps, true, np.full(n + 1, 0.01), steps[1:].astype(float), true[1:], eval_prompts=1000)
        Counting.fits = []
        model = Combination([Counting()], alongside=(), samples=20).fit(curve)
        counts[n] = (len(Counting.fits), max(Counting.fits), len(model.backtest_["Counting"]["pairs"]))
        assert max(Counting.fits) <= 2 * (MAX_POINTS + 1)
        assert counts[n][2] <= MAX_ORIGINS * MAX_SCORED
    assert counts[100][0] == counts[20_000][0] == 1 + MAX_ORIGINS  # the member's own fit and one per origin


# --- the command on tiny runs ---

def write_run(root, seed=0, task="arith", steps=range(10, 130, 10), lift=0.0, weights=True):
    """A run folder: planted rank-1 checkpoints (tiny Llama), run.json with noisy sigmoid accuracies, their 95 %
    intervals, train rewards and a 300-step plan, and a denser reward log in the last checkpoint's trainer_state."""
    from rlcast.io.synthetic import planted_run

    steps = list(steps)
    if weights:
        planted_run(root, steps=steps, kind="saturating", hidden=32, layers=2, seed=seed)
    else:
        root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    true = sigmoid(steps, a=A + lift)
    acc = rng.binomial(1000, true) / 1000
    sd = np.sqrt(true * (1 - true) / 1000)
    entries = [{"step": s, "path": f"checkpoint-{s}", "accuracy": float(a), "ci": [a - 1.96 * d, a + 1.96 * d],
                "train_reward": float(t - 0.05)} for s, a, d, t in zip(steps, acc, sd, true)]
    manifest = {"format": 2, "base": "base", "task": task, "base_accuracy": R0, "base_ci": [0.233, 0.287],
                "config": {"steps": 300, "eval_prompts": 1000, "task": task, "seed": seed}, "checkpoints": entries,
                "status": "running"}
    (root / "run.json").write_text(json.dumps(manifest))
    if weights:
        log = [{"step": s, "reward": float(sigmoid(s, a=A + lift) - 0.05 + rng.normal(0, 0.004)), "loss": 0.0}
               for s in range(5, steps[-1] + 1, 5)]
        (root / f"checkpoint-{steps[-1]}" / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forecast")
    return write_run(folder / "low", seed=0), write_run(folder / "high", seed=1, lift=0.08)


def test_read_curve_from_run_json_and_trainer_state(runs):
    curve = read_curve(load_run(runs[0]))
    assert curve.steps.tolist() == [0] + list(range(10, 130, 10)) and curve.planned == 300
    assert curve.sd[1] == pytest.approx(np.sqrt(sigmoid(10) * (1 - sigmoid(10)) / 1000), rel=1e-3)
    assert curve.reward_steps.tolist() == list(range(5, 125, 5))  # trainer_state's log, denser than run.json's
    assert curve.window(60).steps.max() == 60 and curve.window(60).reward_steps.max() == 60


def test_read_log_gives_the_curve_read_curve_gives(runs):
    """The run folder's reader (rlcast.io.logs) is where read_curve's data comes from: the same arrays either way."""
    from rlcast.io.logs import read_log

    loaded, logged = read_curve(load_run(runs[0])), Curve.from_log(read_log(runs[0]))
    for name in ("steps", "accuracy", "sd", "reward_steps", "reward"):
        assert np.array_equal(getattr(loaded, name), getattr(logged, name)), name
    assert (logged.run, logged.planned, logged.eval_prompts, logged.task) == (str(runs[0]), 300, 1000, "arith")


def test_cli_forecast_one_run_json_and_weights(runs, run_cli, tmp_path):
    code, out, err = run_cli("forecast", runs[0], "--until", 80, "--reach", 0.4, "--json", tmp_path / "f.json")
    assert code == 0, err
    data = json.loads((tmp_path / "f.json").read_text())
    (r,) = data["runs"]
    assert r["run"] == str(runs[0]) and r["target_step"] == 300 and r["cutoff"] == 80
    assert r["combined"]["low"] < r["combined"]["median"] < r["combined"]["high"]
    fitted = {k: v for k, v in r["forecasters"].items() if "median" in v}
    assert set(fitted) == set(MEMBERS + ALONGSIDE)  # the weights were readable: alpharl ran, alongside
    assert sum(v["weight"] for v in fitted.values()) == pytest.approx(1.0) and fitted["alpharl"]["weight"] == 0.0
    assert sorted(k for k, v in fitted.items() if not v["in_combination"]) == sorted(ALONGSIDE)
    assert all(v["low"] <= v["median"] <= v["high"] for v in fitted.values())
    members = [v["median"] for v in fitted.values() if v["in_combination"]]
    assert min(members) <= r["combined"]["median"] <= max(members) and abs(r["combined"]["median"] - sigmoid(300)) < 0.1
    saturating = [k for k, v in fitted.items() if v["weight"] and v["convergence"]]
    assert (r["convergence"]["median"] > 0.3) if saturating else r["convergence"] is None  # a power law never levels
    assert r["gain"]["median"] > 0
    assert r["reach"]["accuracy"] == 0.4 and 80 < r["reach"]["median"] < 3000
    assert "step 300" in out and "combined" in out and "0.400 reached at step" in out

    code, out, err = run_cli("forecast", runs[0], "--until", 80, "--no-weights", "--json", tmp_path / "g.json")
    assert code == 0, err
    assert "alpharl" not in json.loads((tmp_path / "g.json").read_text())["runs"][0]["forecasters"]


def test_cli_forecast_json_never_replaces_what_it_reads(runs, run_cli):
    manifest = (runs[0] / "run.json").read_bytes()
    for target, label in ((runs[0], "the run folder"), (runs[0] / "run.json", "the run's run.json")):
        code, _, err = run_cli("forecast", runs[0], "--no-weights", "--json", target)
        assert code == 1 and f"is {label}, an input of this command" in err
        assert len(err.strip().splitlines()) == 1 and (runs[0] / "run.json").read_bytes() == manifest


def test_cli_forecast_never_reads_past_until(runs, run_cli, tmp_path):
    """Poison everything after --until (run.json accuracies and rewards, the trainer log): the figures do not move."""
    import shutil

    copy = shutil.copytree(runs[0], tmp_path / "copy")
    code, _, err = run_cli("forecast", copy, "--until", 70, "--no-weights", "--json", tmp_path / "a.json")
    assert code == 0, err
    manifest = json.loads((copy / "run.json").read_text())
    for e in manifest["checkpoints"]:
        if e["step"] > 70:
            e.update(accuracy=0.99, ci=[0.98, 1.0], train_reward=-3.0)
    (copy / "run.json").write_text(json.dumps(manifest))
    state = copy / "checkpoint-120" / "trainer_state.json"
    log = json.loads(state.read_text())
    for h in log["log_history"]:
        h["reward"] = h["reward"] if h["step"] <= 70 else 7.0
    state.write_text(json.dumps(log))
    code, _, err = run_cli("forecast", copy, "--until", 70, "--no-weights", "--json", tmp_path / "b.json")
    assert code == 0, err
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["runs"][0]["run"] != str(runs[0]) and a == b


def test_cli_ranks_several_runs(runs, run_cli, tmp_path):
    code, out, err = run_cli("forecast", *runs, "--until", 100, "--no-weights", "--json", tmp_path / "r.json")
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ranking"]["order"] == [str(runs[1]), str(runs[0])]  # the lifted run ends higher
    assert 0.5 < data["ranking"]["p_leader"] <= 1.0
    assert "ranking" in out and "P(the leader really ends highest)" in out


def test_bad_inputs_fail_in_one_line_before_any_fit(runs, run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(Combination, "fit", lambda *a, **k: pytest.fail("fitted before the input was checked"))

    def one_line(args, *words):
        code, _, err = run_cli("forecast", *args)
        assert code == 1 and err.strip().count("\n") == 0 and err.startswith("error:"), err
        for word in words:
            assert word in err.replace("\n", ""), err

    one_line([runs[0], "--until", 25], str(runs[0]), "2 checkpoint(s)", "at least 3")
    flat = write_run(tmp_path / "flat", weights=False)
    manifest = json.loads((flat / "run.json").read_text())
    for e in manifest["checkpoints"]:
        e["accuracy"] = 0.3
    manifest["base_accuracy"] = 0.3
    (flat / "run.json").write_text(json.dumps(manifest))
    one_line([flat], str(flat), "constant")
    one_line([runs[0], "--until", 100, "--target", 50], str(runs[0]), "target step 50 is before the cutoff step 100")
    other = write_run(tmp_path / "other", task="rg:letter_counting", weights=False)
    one_line([runs[0], other, "--no-weights"], "different tasks", str(other), "rg:letter_counting")
    with pytest.raises(RlcastError, match="unknown forecaster"):
        make_forecaster("no-such-forecaster")


LIBRARY_CURVE = Path(__file__).resolve().parent.parent / "docs" / "results" / "curves" / "steady" / "seed100-lr3e-05-mu1"


def test_until_past_the_last_checkpoint_is_refused_not_clamped():
    from rlcast.apps.forecast import prepare

    with pytest.raises(RlcastError, match="--until 500 is after its last checkpoint \\(step 300\\)"):
        prepare([LIBRARY_CURVE], until=500, weights=False)


def test_the_table_says_when_no_back_test_set_the_weights():
    from rich.console import Console

    from rlcast.apps.forecast import forecast_curve, prepare, run_table

    def caption(until):
        (curve, target), = prepare([LIBRARY_CURVE], until=until, weights=False)
        console = Console(width=400, record=True)
        console.print(run_table(forecast_curve(curve, target)))
        return " ".join(console.export_text().split())  # the caption wraps at the table's width

    assert "equal weights: too few checkpoints" in caption(30) and "rolling-origin back-test" not in caption(30)
    assert "weights from a rolling-origin back-test on steps <= 120" in caption(120)
