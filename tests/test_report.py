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


def test_report_is_self_contained_and_embeds_its_plots(run_root, cache, tmp_path):
    from rlcast.io.runs import load_run
    from rlcast.apps.report import build_report

    out = build_report(load_run(run_root), out=tmp_path / "report.html", rank=4, progress=False, cache_dir=cache)
    page = out.read_text()
    images = _images(page)
    assert len(images) == 6  # accuracy, forecast fan chart, spectra, rank-1 energy, R^2 heat maps, u1 projection
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5000 for img in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: opens offline
    assert "step_r2_heldout" in page and "model.layers.1.mlp.down_proj" in page
    assert "rlcast dominance RUN" in page  # no dominance.json yet: the report says how to get it
    assert not list(tmp_path.glob(".report.html.tmp-*"))


def test_report_reuses_saved_results(run_root, cache, tmp_path):
    from rlcast.io.runs import load_run
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
    assert "rlcast dominance RUN" not in page


def test_cli_dynamics_writes_json_and_errors_are_one_line(run_root, tmp_path):
    cmd = [sys.executable, "-m", "rlcast.apps.cli"]
    ok = subprocess.run(cmd + ["dynamics", str(run_root), "--json", str(tmp_path / "d.json")], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["summary"]["overall"]["n_modules"] == 14 and "mlp.up_proj" in ok.stdout
    bad = subprocess.run(cmd + ["dynamics", str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Usage:" in bad.stderr and "missing' does not exist" in bad.stderr  # checked first
