import base64
import json
import re
import subprocess
import sys

import pytest

STEPS = [10, 20, 30, 40, 50, 60]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    from rlcast.io.synthetic import planted_run

    root = planted_run(tmp_path_factory.mktemp("r") / "run", steps=STEPS, rank=2, kind="saturating", noise=0.01,
                       hidden=32, layers=2)
    entries = [{"step": s, "path": f"checkpoint-{s}", "accuracy": 0.3 + 0.004 * s} for s in STEPS]
    (root / "run.json").write_text(json.dumps({"base": "base", "task": "arith", "algo": "grpo", "lora": False,
                                               "base_accuracy": 0.3, "checkpoints": entries}))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # spectra shared by the report tests


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.mark.slow
def test_report_is_self_contained_and_embeds_its_plots(run_root, cache, tmp_path):
    from rlcast.io.checkpoints import load_run
    from rlcast.apps.report import build_report

    out = build_report(load_run(run_root), out=tmp_path / "report.html", rank=4, progress=False, cache_dir=cache)
    page = out.read_text()
    images = _images(page)
    assert len(images) == 6  # accuracy, forecast fan chart, spectra, rank-1 energy, R^2 heat maps, u1 projection
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5000 for img in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: opens offline
    assert "model.layers.1.mlp.down_proj" in page and "R^2 held out" in page
    assert "share_step_r2_heldout_lt_0" not in page and "held-out step R^2 &lt; 0" in page  # labels, not keys
    assert "rlcast dominance RUN" in page  # no dominance.json yet: the report says how to get it
    # the story first: a title naming the run, the verdict in words, then plots, tables last
    assert "<h1>rlcast: grpo on arith, optimizer steps 10-60</h1>" in page
    order = [page.index(f"<h2>{h}</h2>") for h in ("What this run shows", "Accuracy against the step",
                                                    "Rank-1 linear dynamics: R^2 heat maps", "Summary", "Per module")]
    assert order == sorted(order)
    story = page[page.index("What this run shows"):page.index("<h2>Accuracy against the step")]
    assert "from 0.300 (the base) to 0.540 at the last checkpoint, step 60: +0.240 in 60 optimizer steps." in story
    assert story.index("Held-out accuracy went") < story.index("held-out R^2")  # the run's story before rank-1
    assert "more than half (NExt)" in story  # next to the published figure
    assert page.count("<div class=scroll><table>") >= 4  # wide tables scroll instead of being cut off
    assert not list(tmp_path.glob(".report.html.rlcast-*"))


@pytest.mark.slow
def test_report_reuses_saved_results(run_root, cache, tmp_path):
    from rlcast.io.checkpoints import load_run
    from rlcast.apps.report import build_report, results_dir

    from rlcast.apps.dominance import DominanceResult, recovery
    from rlcast.evaluation.scoring import Score

    run = load_run(run_root)
    folder = results_dir(run)
    per_prompt = lambda n_right: [1.0] * n_right + [0.0] * (100 - n_right)  # noqa: E731
    base, full, rank1 = (Score(label, k, n / 100, n / 100 - 0.05, n / 100 + 0.05, per_prompt(n))
                         for label, k, n in (("base", None, 30), ("full", None, 54), ("rank-1", 1, 50)))
    result = DominanceResult(run=str(run_root), step=60, task="arith", n_prompts=100, selection="blocks",
                             rescale=True, seed=0, base=base, full=full, ranks=[rank1],
                             recovery=[recovery(base, full, rank1)])
    result.save(folder / "dominance.json")  # the file the report reads is the one `rlcast dominance` writes
    rec = result.recovery[0]
    try:
        page = build_report(run, out=tmp_path / "r.html", rank=4, progress=False, cache_dir=cache).read_text()
    finally:
        (folder / "dominance.json").unlink()
    assert f"{rec.recovery:.3f}" in page and f"{rec.gain_recovery:.3f}" in page
    assert f"[{rec.gain_recovery_ci[0]:.3f}, {rec.gain_recovery_ci[1]:.3f}]" in page
    assert "rlcast dominance RUN" not in page and f"read from {folder / 'dominance.json'}" in page
    story = page[page.index("What this run shows"):page.index("<h2>Accuracy against the step")]
    assert f"{rec.recovery:.0%} of the full model's accuracy" in story and "0.992 (AlphaRL)" in story


@pytest.mark.slow
def test_report_places_lead_sections_and_notes_after_the_verdict(run_root, cache, tmp_path):
    from rlcast.io.checkpoints import load_run
    from rlcast.apps.report import build_report

    page = build_report(load_run(run_root), out=tmp_path / "r.html", rank=4, progress=False, cache_dir=cache,
                        verdict_notes=["no measurable speed-up <here>"],
                        lead=[("Live acceleration", "<p>LEAD</p>")]).read_text()
    assert "no measurable speed-up &lt;here&gt;" in page
    assert page.index("What this run shows") < page.index("<h2>Live acceleration</h2>") < page.index(
        "<h2>Accuracy against the step")


def test_r2_heat_map_colours_keep_outliers_apart():
    import matplotlib
    import numpy as np
    from rlcast.apps.report import _split_scale, heatmaps

    matplotlib.use("Agg")
    forward, inverse = _split_scale(-1.0, 1.0)
    x = np.array([-37.0, -5.0, -1.0, 0.0, 1.0])
    y = forward(x)
    assert np.all(np.diff(y) > 0) and y[2:].tolist() == [-1.0, 0.0, 1.0]  # linear on [-1, 1], distinct below
    assert np.allclose(inverse(y), x)
    modules = [{"layer": 0, "kind": "q", "step_r2_heldout": -37.0}, {"layer": 0, "kind": "k", "step_r2_heldout": 0.5},
               {"layer": 1, "kind": "q", "step_r2_heldout": -1.0}, {"layer": 1, "kind": "k", "step_r2_heldout": 0.9}]
    png = base64.b64decode(heatmaps(modules, [("step_r2_heldout", "held out")], -1, 1, "RdYlGn", spread_below=True))
    assert png.startswith(b"\x89PNG")


@pytest.mark.slow
def test_cli_dynamics_writes_json_and_errors_are_one_line(run_root, tmp_path):
    cmd = [sys.executable, "-m", "rlcast.apps.cli"]
    ok = subprocess.run(cmd + ["dynamics", str(run_root), "--json", str(tmp_path / "d.json")], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["summary"]["overall"]["n_modules"] == 14 and "mlp.up_proj" in ok.stdout
    bad = subprocess.run(cmd + ["dynamics", str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Usage:" in bad.stderr and "missing' does not exist" in bad.stderr  # checked first


# --- the story in the run's own units, and rank-1 figures only when they are findings ---

def _manifest(steps_per_batch: int = 2):
    from rlcast.io.manifest import Entry, Manifest

    return Manifest(format=1, algo="grpo", task="arith", base_accuracy=0.3, checkpoints=[
        Entry(s, f"checkpoint-{s}", 0.3 + 0.001 * s, generation_batches=s // steps_per_batch) for s in (100, 200, 300)])


def test_the_story_counts_optimizer_steps_and_generation_batches():
    from rlcast.apps.report import step_axis, story

    manifest = _manifest()
    said = story(manifest.accuracy, manifest)
    assert said == ("Held-out accuracy went from 0.300 (the base) to 0.600 at the last checkpoint, step 300: +0.300 "
                    "in 300 optimizer steps, 150 generation batches (2 optimizer steps per batch).")
    assert step_axis(manifest) == "optimizer step (2 per generation batch)"  # the plots' axis, the title's unit
    plain = _manifest(steps_per_batch=1)
    assert story(plain.accuracy, plain).endswith("300 generation batches (1 optimizer step per batch).")
    peaked = {0: 0.3, 100: 0.5, 200: 0.45, 300: 0.4}
    assert "after a peak of 0.500 at step 100" in story(peaked, None) and "batches" not in story(peaked, None)


@pytest.mark.slow
def test_the_title_and_the_axis_name_the_same_unit(run_root, cache, tmp_path):
    from rlcast.apps.report import build_report
    from rlcast.io.checkpoints import load_run

    data = json.loads((run_root / "run.json").read_text())
    for e in data["checkpoints"]:
        e["generation_batches"] = e["step"] // 2
    run = load_run(run_root)
    run.manifest = type(run.manifest).parse(data)
    page = build_report(run, out=tmp_path / "r.html", rank=4, progress=False, cache_dir=cache).read_text()
    assert "<h1>rlcast: grpo on arith, optimizer steps 10-60 (2 per generation batch)</h1>" in page
    assert "60 optimizer steps, 30 generation batches (2 optimizer steps per batch)" in page


def _dominance(gain: float, ci: tuple[float, float], rank1_accuracy: float) -> dict:
    score = lambda label, k, acc: {"label": label, "k": k, "accuracy": acc, "ci_low": acc - 0.05,  # noqa: E731
                                   "ci_high": acc + 0.05}
    return {"step": 300, "n_prompts": 200, "base": score("base", None, 0.4), "full": score("full", None, 0.5),
            "ranks": [score("rank-1", 1, rank1_accuracy)],
            "recovery": [{"recovery": rank1_accuracy / 0.5, "recovery_ci": [0.7, 1.1], "gain_recovery": gain,
                          "gain_recovery_ci": list(ci)}]}


def test_a_gain_recovery_with_a_huge_interval_is_not_a_finding():
    from rlcast.apps.report import verdict

    said = " ".join(verdict({}, _dominance(0.57, (-2.0, 1.94), 0.457), {})[0])
    assert "not measurable on this many prompts" in said
    assert "57 %" not in said.split("not measurable")[0] and "of the gain over the base [" not in said
    assert "below the base" not in said


def test_a_rank1_model_below_the_base_says_what_it_means_for_extrapolation():
    from rlcast.apps.report import verdict

    said = " ".join(verdict({}, _dominance(-0.39, (-0.6, -0.2), 0.361), {})[0])
    assert "-39% of the gain over the base" in said and "rank-1 model scores below the base (0.361 against 0.400)" \
        in said
    assert "assume rank-1 dominance; it does not hold on this run" in said
    holds = " ".join(verdict({}, _dominance(0.8, (0.6, 0.95), 0.48), {})[0])
    assert "below the base" not in holds and "80% of the gain over the base [0.600, 0.950]" in holds


@pytest.mark.slow
def test_a_run_without_accuracies_names_the_command_that_scores_it(run_root, cache, tmp_path):
    from rlcast.apps.report import build_report
    from rlcast.io.checkpoints import load_run

    run = load_run(run_root)
    run.manifest = type(run.manifest).parse({"base": "base", "task": "arith", "algo": "grpo",
                                             "checkpoints": [{"step": s, "path": f"checkpoint-{s}"} for s in STEPS]})
    page = build_report(run, out=tmp_path / "r.html", rank=4, progress=False, cache_dir=cache).read_text()
    story = page[page.index("What this run shows"):page.index("<h2>Accuracy against the step")]
    assert "No held-out accuracy is recorded" in story and "rlcast eval RUN scores the base" in story
    forecast = page[page.index("<h2>Forecast</h2>"):]
    assert "no forecast: " in forecast and f"`rlcast eval {run_root}` scores every checkpoint" in forecast
