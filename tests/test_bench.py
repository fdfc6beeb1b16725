"""The benchmark suite's seams: bench/run.py lists every script, bench/common.py's conventions and metrics, and
bench/gpu_check.py --quick on the CPU against itself (every path agrees exactly, the last line has its format)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture()
def bench_modules(monkeypatch):
    """bench/ on sys.path, as when a script runs (the scripts import bench/common.py)."""
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.slow
def test_run_list_names_every_bench_script_with_its_docstring():
    out = subprocess.run([sys.executable, str(BENCH / "run.py"), "--list"], capture_output=True, text=True,
                         check=True).stdout
    listed = {line.split()[0]: line for line in out.splitlines() if line and not line[0].isspace()}
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"common", "run"}
    assert set(listed) == scripts and "gpu_check" in scripts
    for name, line in listed.items():
        first = (BENCH / f"{name}.py").read_text().split('"""')[1].strip().splitlines()[0]
        assert first in line
    assert "[< 8 min on one GPU" in out  # a declared duration, on the line under its script


@pytest.mark.slow
def test_run_refuses_an_unknown_bench_in_one_line():
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "no_such_bench"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no benchmark 'no_such_bench'" in proc.stderr and "gpu_check" in proc.stderr


def test_seeds_counts_lists_and_ranges(bench_modules):
    from common import parse_seeds

    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("100,101") == [100, 101]
    assert parse_seeds("100-102,7") == [100, 101, 102, 7]
    assert parse_seeds("5-5") == [5]
    for bad in ("1,1", "a", "3-x", "", "0"):  # "0": no seeds, never silently the defaults
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


def test_goal_metrics_on_the_generation_batch_axis_and_their_spread(bench_modules):
    from common import goal_metrics, per_batch, spread

    reference = {0: 0.40, 10: 0.45, 20: 0.50, 30: 0.55, 40: 0.60}
    reused = per_batch({0: 0.40, 20: 0.59, 40: 0.60, 60: 0.61, 80: 0.62}, mu=2)  # 2 optimizer steps per batch
    assert reused == {0: 0.40, 10: 0.59, 20: 0.60, 30: 0.61, 40: 0.62}
    result = goal_metrics(reference, reused, overhead=10.0)
    assert result["reference_steps"] == 40 and result["steps"] == 10
    assert result["speedup"] == pytest.approx(4.0) and result["effective_speedup"] == pytest.approx(2.0)
    assert result["retained"] == pytest.approx(0.62 / 0.60)
    never = goal_metrics(reference, {0: 0.40, 40: 0.41})
    assert never["speedup"] == 0.0 and never["steps"] is None  # never reaching the goal counts as speedup 0
    lost = goal_metrics(reference, {0: 0.40, 10: 0.59, 20: 0.60, 30: 0.50, 40: 0.52})  # crossed at 10, ended below
    assert lost["speedup"] == 0.0 and lost["steps"] is None and lost["crossed"] == 10
    assert spread([3.0, None, 1.0, float("nan"), 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


@pytest.mark.slow
def test_gpu_check_quick_on_the_cpu_agrees_with_itself(bench_modules, monkeypatch, capsys, tmp_path,
                                                         torch_single_thread):
    import gpu_check

    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    checks = gpu_check.main()
    lines = capsys.readouterr().out.strip().splitlines()
    found = re.fullmatch(r"gpu_paths_ok=(\d+)/(\d+) max_rel_diff=(\S+) spectra_speedup=(\S+)", lines[-1])
    assert found, lines[-1]
    ok, paths, worst = int(found[1]), int(found[2]), float(found[3])
    assert ok == paths == len(checks) >= 5 and worst == 0.0
    assert {c.path.split()[0] for c in checks} >= {"spectra", "analyze", "extrapolation", "writer", "trl"}
    assert all(c.diff == 0.0 for c in checks)  # the CPU against itself: every path, the GRPO steps too, is exact
    assert any("--device cpu: every path runs on the CPU against itself" in line for line in lines)
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(record) == {"bench", "argv", "provenance", "settings", "rows", "summary", "line", "seconds"}
    assert {"machine", "commit", "versions", "command"} <= set(record["provenance"])
    assert record["bench"] == "gpu_check" and record["line"] == lines[-1] and len(record["rows"]) == paths
    assert record["summary"]["ok"] == paths and record["settings"]["device"] == "cpu"


def test_generation_share_turns_fewer_generation_batches_into_wall_time(bench_modules):
    from generation_share import implied_wall

    assert implied_wall(1.0, 2.0, passes=4, reference_passes=2) == pytest.approx(2.0)  # generating is all the cost
    assert implied_wall(0.0, 2.0, passes=4, reference_passes=2) == pytest.approx(1.0)  # backward passes are
    assert implied_wall(0.5, 1.0, passes=3, reference_passes=2) == pytest.approx(0.75)  # (0.5 + 1) / (0.5 + 1.5)


def test_acceleration_report_refuses_mixed_best_plain_settings_or_seed_kinds(bench_modules, capsys):
    from acceleration import summarize

    def row(seed, mu):
        part = {"speedup": 1.5, "wall_speedup": None, "retained": 1.0}
        return {"seed": seed, "method": "rank1", "settings": {}, "best_plain": [1.2e-4, mu], "side_by_side": False,
                "vs_best": part, "vs_preset": part}

    summary, line = summarize([row(0, 2), row(1, 2)])
    assert line.startswith("speedup_vs_best_plain=1.50 retained=1.000 seeds=2")
    assert summary["vs_best"]["speedup"] == {"median": 1.5, "min": 1.5, "max": 1.5, "n": 2} and summary["seeds"] == [0, 1]
    with pytest.raises(SystemExit, match="different best plain settings"):
        summarize([row(0, 2), row(1, 4)])
    with pytest.raises(SystemExit, match="mix tuning seeds"):
        summarize([row(0, 2), row(100, 2)])


def test_acceleration_counts_a_goal_crossed_then_lost_as_no_speedup(bench_modules):
    from acceleration import compare, not_held

    def curve(*scores):
        return [{"batches": 10 * i, "accuracy": a, "wall": 5.0 * i, "cpu": 5.0 * i} for i, a in enumerate(scores)]

    plain = curve(0.15, 0.14, 0.10, 0.20, 0.22)
    collapsed = compare(curve(0.15, 0.22, 0.23, 0.05, 0.00), plain)  # an early noisy crossing, then a collapse
    assert not collapsed["held"] and collapsed["speedup"] == 0.0 and collapsed["wall_speedup"] == 0.0
    assert "crossed at batch 10" in not_held(collapsed)
    kept = compare(curve(0.15, 0.22, 0.23, 0.21, 0.22), plain)
    assert kept["held"] and kept["speedup"] == 4.0 and kept["wall_speedup"] == 4.0 and not_held(kept) == ""


def test_acceleration_counts_rollout_methods_in_completions_generated(bench_modules):
    """A method that reaches the goal at the same generation batch with half the completions per batch is 2x faster
    in completions (the cost of skipping prompts), and counted in batches when a curve lacks the count."""
    from acceleration import compare, cost_axis

    def curve(scores, per_batch):
        return [{"batches": 10 * i, "completions": 10 * i * per_batch, "accuracy": a, "wall": None, "cpu": None}
                for i, a in enumerate(scores)]

    scores = (0.15, 0.18, 0.21, 0.22)
    skipped = compare(curve(scores, 192), curve(scores, 384))
    assert skipped["cost"] == "completions" and skipped["speedup"] == 2.0
    assert skipped["method"]["batches"] == 30 and skipped["method"]["completions"] == 30 * 192
    old = [dict(r, completions=None) for r in curve(scores, 384)]
    assert cost_axis(curve(scores, 192), old) == "batches" and compare(curve(scores, 192), old)["speedup"] == 1.0


def test_acceleration_counts_completions_of_runs_from_before_the_count(bench_modules, tmp_path):
    from acceleration import points
    from rlcast.io.manifest import Entry, Manifest

    Manifest(config={"batch_size": 384}, base_accuracy=0.1, status="finished",
             checkpoints=[Entry(step=40, path="checkpoint-40", accuracy=0.3, generation_batches=10),
                          Entry(step=80, path="checkpoint-80", accuracy=0.4, generation_batches=20,
                                completions=5000)]).write(tmp_path / "run.json")
    assert [r["completions"] for r in points(tmp_path, 4)] == [0, 3840, 5000]


def test_acceleration_sets_a_method_that_spends_more_beside_the_plain_run_continued(bench_modules, tmp_path):
    from acceleration import longer
    from rlcast.io.manifest import Entry, Manifest

    Manifest(config={"batch_size": 100}, base_accuracy=0.1, status="finished",
             checkpoints=[Entry(step=4 * b, accuracy=0.1 + b / 100, generation_batches=b, completions=100 * b)
                          for b in range(10, 61, 10)]).write(tmp_path / "seed0-lr0.00012-mu4" / "run.json")
    method = [{"batches": b, "completions": 200 * b, "accuracy": 0.2 + b / 100} for b in (0, 10, 20, 30)]
    row = {"seed": 0, "best_plain": [1.2e-4, 4], "curves": {"method": method}}
    line = longer(row, tmp_path)  # the method spent 6000 completions: the plain run's batch 60
    assert "scores 0.700 (batch 60), its last 3 0.600; the method's last 3 0.400" in line
    assert "no longer best plain run" in longer(dict(row, seed=1), tmp_path)


def test_acceleration_sets_a_method_against_another_plain_setting_of_the_library(bench_modules, tmp_path):
    """--against replaces each row's best plain run by the library folder's run at the same lr and mu (another group
    size, say) and redoes the comparison; a seed missing there is one line."""
    from acceleration import against, summarize
    from rlcast.io.manifest import Entry, Manifest

    library = tmp_path / "steady+num_generations=4"
    Manifest(config={"batch_size": 100}, base_accuracy=0.1, status="finished",
             checkpoints=[Entry(step=4 * b, accuracy=0.1 + b / 100, generation_batches=b, completions=100 * b)
                          for b in range(10, 31, 10)]).write(library / "seed0-lr0.00012-mu4" / "run.json")
    method = [{"batches": b, "completions": 100 * b, "accuracy": 0.1 + b / 50} for b in (0, 10, 20, 30)]
    best = [{"batches": b, "completions": 100 * b, "accuracy": 0.1 + b / 200} for b in (0, 10, 20, 30)]
    row = {"seed": 0, "best_plain": [1.2e-4, 4], "method": "adaptive", "settings": {}, "side_by_side": True,
           "curves": {"method": method, "best": best, "preset": best}}
    row["vs_best"] = row["vs_preset"] = {"speedup": 3.0, "wall_speedup": 2.0, "retained": 2.0}
    moved = against(row, library)  # the new reference ends at 0.4: the method (0.3, 0.5, 0.7) reaches 0.392 at 20
    assert moved["vs_best"]["speedup"] == 1.5 and moved["vs_best"]["goal"] == pytest.approx(0.392)
    assert moved["curves"]["best"][-1]["accuracy"] == pytest.approx(0.4) and not moved["side_by_side"]
    assert summarize([moved])[1].endswith("against=steady+num_generations=4") and row["vs_best"]["speedup"] == 3.0
    with pytest.raises(SystemExit, match="seed1-lr0.00012-mu4: not in the curve library"):
        against(dict(row, seed=1), library)


def test_baselines_pick_the_fastest_setting_whose_final_is_within_noise_of_the_best(bench_modules):
    from baselines import FINAL_NOISE, fastest

    med = {(4.0, 2): {"final": 0.504, "speedup": 3.3}, (4.0, 4): {"final": 0.504 - FINAL_NOISE / 2, "speedup": 4.8},
           (8.0, 8): {"final": 0.40, "speedup": 9.0}}  # fastest of all, but its final is far below
    assert fastest(list(med), med, "speedup") == (4.0, 4)
    med[4.0, 4]["final"] = 0.504 - 2 * FINAL_NOISE
    assert fastest(list(med), med, "speedup") == (4.0, 2)


def test_baselines_choose_a_group_size_from_the_library_variants(bench_modules, tmp_path, monkeypatch):
    """--num-generations reads the variant folders bench/curves.py writes (steady+num_generations=G) and picks the
    group size like any other axis: the fastest setting whose final is within noise of the best."""
    import dataclasses

    import baselines
    from rlcast.evaluation.tasks import get_task
    from rlcast.io.manifest import Entry, Manifest
    from rlcast.training.train import preset

    library = tmp_path / "curves" / "steady"
    slow = preset("steady-slow")
    first_good = {(1, 1, 8): 30, (4, 2, 8): 12, (4, 2, 4): 6, (4, 2, 16): 2}  # batch reaching 0.5 (16: ends low)
    for (m, mu, g), batch in first_good.items():
        config = dataclasses.replace(slow, seed=100, learning_rate=m * slow.learning_rate, num_generations=g,
                                     num_iterations=mu, steps=slow.steps * mu, save_every=2 * mu)
        config = config.resolve(get_task(config.task, config.task_args))
        folder = library.with_name("steady" + ("" if g == 8 else f"+num_generations={g}")) / \
            f"seed100-lr{config.learning_rate:g}-mu{mu}"
        final = 0.4 if g == 16 else 0.5
        Manifest(config=dataclasses.asdict(config), base_accuracy=0.1, status="finished",
                 checkpoints=[Entry(step=b * mu, accuracy=final if b >= batch else 0.2, generation_batches=b)
                              for b in range(2, slow.steps + 1, 2)]).write(folder / "run.json")
    monkeypatch.setattr("sys.argv", ["baselines.py", "--preset", "steady-slow", "--multipliers", "4", "--mu", "2",
                                     "--num-generations", "4,16", "--seeds", "100-100", "--save-every", "2",
                                     "--library", str(library), "--out", str(tmp_path / "out")])
    baselines.main()
    result = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert result["line"].endswith("num_generations=4") and result["line"].startswith("best_lr=0.00012 mu=2 ")
    assert {(r["num_generations"], r["speedup"]) for r in result["rows"]} >= {(4, 5.0), (8, 2.5), (16, 0.0)}


def test_reuse_sets_m2po_beside_clipping_from_the_library(bench_modules, tmp_path, monkeypatch, capsys):
    """bench/reuse.py reads clipped runs from PRESET/ and M2PO runs from PRESET+m2po_threshold=T/, each checked to hold
    its config, measures every run against the clipped reference's goal and says what the trust region touched."""
    import dataclasses

    import reuse
    from rlcast.evaluation.tasks import get_task
    from rlcast.io.manifest import Entry, Manifest
    from rlcast.training.train import preset

    library = tmp_path / "curves"
    steady = preset("steady")
    first_good = {("clip", 4): 200, ("clip", 8): 250, ("m2po", 4): 200, ("m2po", 8): 100}  # batch reaching 0.5
    for (loss, mu), batch in first_good.items():
        config = dataclasses.replace(steady, seed=100, num_iterations=mu, steps=300 * mu, save_every=10 * mu,
                                     m2po_threshold=0.04 if loss == "m2po" else None)
        config = config.resolve(get_task(config.task, config.task_args))
        variant = "+m2po_threshold=0.04" if loss == "m2po" else ""
        folder = library / f"steady{variant}" / f"seed100-lr0.00012-mu{mu}"
        Manifest(config=dataclasses.asdict(config), base_accuracy=0.1, status="finished",
                 checkpoints=[Entry(step=b * mu, accuracy=0.5 if b >= batch else 0.2, generation_batches=b)
                              for b in range(10, 301, 10)]).write(folder / "run.json")
        key = "m2po/masked" if loss == "m2po" else "clip_ratio/region_mean"
        history = [{"step": s, "grad_norm": 1.0, key: 0.01 * mu * (s > 150 * mu)}  # logged every 10 steps
                   for s in range(0, 300 * mu + 1, 10)]
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    monkeypatch.setattr("sys.argv", ["reuse.py", "--seeds", "100-100", "--mu", "4,8,16", "--m2po-mu", "4,8",
                                     "--library", str(library), "--out", str(tmp_path / "out")])
    reuse.main()
    out = capsys.readouterr().out
    assert "seed 100 clip mu 8: final 0.500 (last 3 0.500), goal 0.490 at batch 250, speedup 0.80" in out
    assert "m2po/masked 0.080" in out and "steady/seed100-lr0.00012-mu16 not in the library" in out
    result = json.loads((tmp_path / "out" / "reuse.json").read_text())
    assert result["line"].startswith("best_clip=mu4 speedup_clip=1.00 last3_clip=0.500 best_m2po=mu8 speedup_m2po=2.00")
    assert {(r["trust"], r["mu"], r["speedup"]) for r in result["rows"]} == {
        ("clip", 4, 1.0), ("clip", 8, 0.8), ("m2po", 4, 1.0), ("m2po", 8, 2.0)}


def test_baselines_refuse_a_bad_group_size_in_one_line(bench_modules):
    from baselines import group_sizes

    assert group_sizes("4,16") == [4, 16]
    for bad in ("abc", "1,4", "4,,8"):
        with pytest.raises(argparse.ArgumentTypeError, match="group sizes >= 2"):
            group_sizes(bad)


def test_every_script_keeps_the_one_accounting():
    """Read in the scripts' source (no import, no training): run.json only through Manifest.read, --seeds only through
    common.parse_seeds, KEY=VALUE only through rlcast.io.options.parse_overrides, the goal only from
    rlcast.evaluation.speedup, accelerators only from the factory; every script declares DURATION."""
    for script in sorted(set(BENCH.glob("*.py")) - {BENCH / "common.py", BENCH / "run.py"}):
        source = script.read_text()
        name = script.name
        assert not re.search(r"json\.loads\(\(?[^)]*run\.json", source), f"{name} reads run.json without Manifest.read"
        if "--seeds" in source:
            assert "add_seeds(" in source or "type=parse_seeds" in source, f"{name}: --seeds not parsed by parse_seeds"
        assert not re.search(r"\.partition\(\"=\"\)", source), f"{name} parses KEY=VALUE itself"
        assert not re.search(r"\b0\.98\b|^GOAL\s*=", source, re.M), f"{name} has its own goal"
        assert not re.search(r"LOOKAHEAD\[|AccelerateCallback\(", source), f"{name} builds an accelerator itself"
        assert re.search(r"^DURATION\s*=", source, re.M), f"{name} declares no DURATION"


def test_acceleration_takes_seeds_and_best_plain_as_every_script_does(bench_modules):
    from acceleration import best_plain
    from common import parse_seeds

    assert best_plain("1.2e-4,2") == (1.2e-4, 2)
    for bad in ("1.2e-4", "x,2", "1e-4,0", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected LR,MU"):
            best_plain(bad)
    assert parse_seeds("5") == [0, 1, 2, 3, 4]  # acceleration.py's default, as a count like every script's
