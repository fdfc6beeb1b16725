"""How well `rlcast forecast` predicts where runs end, and what its stop rule saves, on three sets of curves.

Sets (every curve read by `rlcast.io.logs.read_log`, as `rlcast forecast` reads it):
    testbed   the committed curve library, docs/results/curves/PRESET/seedS-lrX-muM/ (bench/curves.py; on the
              generation-batch axis), its seeds chosen by --seeds (default: the benchmark seeds, every seed < 100)
    smollm2   the committed curves of SmolLM2 runs (a preset folder named smollm2*), skipped when none is committed
    logs      real logs: every *.log / *.log.gz in --logs DIR (the verl logs of eric-haibin-lin/verl-data, branch
              experiments, gsm8k/*.log); --held-out NAME is held aside while tuning, reported alone and pooled
Per curve: its final (the mean of its last 3 held-out scores) forecast from 20 % and 40 % of its steps (from its third
validation when that comes later, as on a 100-step log validated every 10 steps; the combined
forecast's median and 90 % interval at its last step), beside "no further change" (the mean of the last 3 scores
seen); and the stop rule (`rlcast.forecasting.stop`) replayed at every validation from the third on: the first stop
gives steps_saved (the share of the run's steps after it) and the loss (the full run's final minus the mean of the
last 3 scores seen at the stop); oracle_saved: what stopping at the first point whose last-3 mean is within 0.01 of
the final would save (on a curve that climbs to its end, little: no rule saves more without losing). One line per set, the held-aside log alone, and last the pooled line:

    mae_20= mae_40= naive_20= naive_40= coverage_90= width_90= steps_saved= loss_mean= loss_max= oracle_saved= runs=

Settings (forecasting.combine, forecasting.stop) were chosen on the tuning seeds (--seeds 100-199) and the two logs
that are not held out.

    .venv/bin/python bench/forecast.py --logs ../shared/outside-curves --eval-size 1319 --out docs/results/forecast
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from common import Results, add_out, console, machine, new_parser, parse_seeds
from rlcast.apps.forecast import forecast_curve
from rlcast.errors import RlcastError
from rlcast.forecasting import Curve
from rlcast.forecasting.stop import MIN_GAIN, PATIENCE, THRESHOLD, decide
from rlcast.io.logs import read_log

DURATION = "~1 min per curve on 2 CPU cores (a forecast at every validation); the three verl logs ~3 min"
LIBRARY = Path(__file__).resolve().parent.parent / "docs" / "results" / "curves"
CUTS = (0.2, 0.4)
NAME = re.compile(r"seed(\d+)-lr(.+)-mu(\d+)")


def library(root: Path, smollm2: bool, seeds: list[int] | None) -> list[Path]:
    """The committed curve folders of the testbed presets (or of the SmolLM2 ones), of `seeds` (None: < 100)."""
    found = []
    for folder in sorted(root.glob("*/seed*-lr*-mu*")):
        match = NAME.fullmatch(folder.name)
        if not match or folder.parent.name.startswith("smollm2") != smollm2 or not (folder / "run.json").is_file():
            continue
        seed = int(match.group(1))
        if (seed in seeds) if seeds is not None else seed < 100:
            found.append(folder)
    return found


def logs(folder: Path | None) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".log", ".log.gz"))) if folder else []


def settled(curve: Curve, upto: int | None = None) -> float:
    """The mean of the last 3 held-out scores after the base (up to step `upto`)."""
    keep = (curve.steps > 0) & (curve.steps <= (upto if upto is not None else curve.last))
    return float(curve.accuracy[keep][-3:].mean())


def evaluate(curve: Curve, name: str) -> dict:
    """A curve's forecasts from 20 % / 40 % and its stop-rule replay (one combination fit per validation, reused)."""
    length, final = curve.last, settled(curve)
    fits: dict[int, object] = {}

    def fitted(step: int):
        if step not in fits:
            fits[step] = forecast_curve(curve.window(step), length, min_gain=MIN_GAIN)
        return fits[step]

    row = {"curve": name, "length": length, "final": final, "points": int((curve.steps > 0).sum())}
    third = int(curve.steps[curve.steps > 0][2])  # a forecast needs 3 scores: a short log's 20 % may hold 2
    for cut in CUTS:
        window = curve.window(max(int(round(cut * length)), third))
        r = fitted(window.last)
        row[f"cut_{int(100 * cut)}"] = {"cutoff": window.last, "naive": settled(curve, window.last),
                                        "forecast": r.combined, "chosen": r.model.chosen_,
                                        "members": {k: v["median"] for k, v in r.forecasters.items() if "median" in v}}
    stops, below = [], 0
    for step in curve.steps[curve.steps > 0][2:]:
        r = fitted(int(step))
        made = decide(r.model.curve_, length, MIN_GAIN, THRESHOLD, r.model, patience=1)
        stops.append({"step": int(step), "p_gain": made.p_gain, "gain": made.gain})
        below = below + 1 if made.stop else 0
        if below >= PATIENCE and step < length:
            row["stop"] = {"step": int(step), "saved": (length - step) / length, "loss": final - settled(curve, step)}
            break
    else:
        row["stop"] = {"step": None, "saved": 0.0, "loss": 0.0}
    row["decisions"] = stops
    level = np.array([settled(curve, s) for s in curve.steps[curve.steps > 0]])
    close = np.flatnonzero(np.abs(level - final) <= 0.01)
    first = curve.steps[curve.steps > 0][close[0]] if len(close) else length
    row["oracle_saved"] = float((length - first) / length)
    return row


def summary(rows: list[dict]) -> dict:
    if not rows:
        return {}
    out = {}
    for cut in CUTS:
        key = f"cut_{int(100 * cut)}"
        out[f"mae_{int(100 * cut)}"] = float(np.mean([abs(r[key]["forecast"]["median"] - r["final"]) for r in rows]))
        out[f"naive_{int(100 * cut)}"] = float(np.mean([abs(r[key]["naive"] - r["final"]) for r in rows]))
    both = [(r[f"cut_{int(100 * c)}"]["forecast"], r["final"]) for r in rows for c in CUTS]
    out["coverage_90"] = float(np.mean([f["low"] <= y <= f["high"] for f, y in both]))
    out["width_90"] = float(np.mean([f["high"] - f["low"] for f, _ in both]))
    out["steps_saved"] = float(np.mean([r["stop"]["saved"] for r in rows]))
    out["loss_mean"] = float(np.mean([r["stop"]["loss"] for r in rows]))
    out["loss_max"] = float(np.max([r["stop"]["loss"] for r in rows]))
    out["oracle_saved"] = float(np.mean([r["oracle_saved"] for r in rows]))
    out["runs"] = len(rows)
    return out


def line(label: str, s: dict) -> str:
    if not s:
        return f"{label}: no curves"
    keys = ["mae_20", "mae_40", "naive_20", "naive_40", "coverage_90", "width_90", "steps_saved", "loss_mean",
            "loss_max", "oracle_saved"]
    return (f"{label}" + "".join(f" {k}={s[k]:.3f}" for k in keys) + f" runs={s['runs']}").strip()


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--seeds", type=parse_seeds, default=None,
                        help="testbed seeds: a count N (0..N-1), a list 100,101 or a range 100-199 (default: every "
                             "committed seed < 100, the benchmark seeds)")
    parser.add_argument("--library", type=Path, default=LIBRARY, help="the curve library (default: %(default)s)")
    parser.add_argument("--logs", type=Path, help="a folder of real logs (*.log, *.log.gz)")
    parser.add_argument("--eval-size", type=int, default=None, metavar="N",
                        help="validation prompts per score in the logs, for the noise model (GSM8K's test: 1319)")
    parser.add_argument("--held-out", default="gemma", metavar="NAME",
                        help="the log (a part of its file name) kept aside while tuning (default: %(default)s)")
    add_out(parser, "the result file")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="only reprint the set lines and the last line of this result file (seconds, no curves)")
    args = parser.parse_args()
    if args.report is not None:
        return report(args.report)
    if args.logs is not None and not args.logs.is_dir():
        parser.error(f"--logs {args.logs}: not a folder")
    if args.eval_size is not None and args.eval_size < 1:
        parser.error(f"--eval-size {args.eval_size}: expected a number of prompts >= 1")
    torch.set_num_threads(1)
    sets = {"testbed": library(args.library, False, args.seeds), "smollm2": library(args.library, True, None),
            "logs": logs(args.logs)}
    if args.logs is not None and not sets["logs"]:
        parser.error(f"--logs {args.logs}: no *.log or *.log.gz in it")
    results = Results(__file__, args, {"min_gain": MIN_GAIN, "threshold": THRESHOLD, "patience": PATIENCE})
    rows: dict[str, list[dict]] = {name: [] for name in sets}
    for name, paths in sets.items():
        if not paths:
            why = {"testbed": f"no committed curve of these seeds under {args.library}",
                   "smollm2": f"no SmolLM2 curve committed under {args.library} (a smollm2* preset folder)",
                   "logs": "no --logs given"}[name]
            console.print(f"{name}: skipped ({why})")
            continue
        for path in paths:
            try:
                curve = Curve.from_log(read_log(path, eval_size=args.eval_size if name == "logs" else None))
            except RlcastError as err:
                console.print(f"[red]{path}: {err}[/]")
                continue
            label = path.name if name == "logs" else f"{path.parent.name}/{path.name}"
            row = {"set": name, **evaluate(curve.generation_axis(), label)}
            row["held_out"] = name == "logs" and args.held_out in path.name
            rows[name].append(row)
            results.add(row)
            stop = row["stop"]
            console.print(f"{label}: final {row['final']:.3f} at {row['length']}; " + "; ".join(
                f"{c}% {row[f'cut_{c}']['forecast']['median']:.3f} [{row[f'cut_{c}']['forecast']['low']:.3f}, "
                f"{row[f'cut_{c}']['forecast']['high']:.3f}] naive {row[f'cut_{c}']['naive']:.3f} "
                f"({row[f'cut_{c}']['chosen']})" for c in (20, 40))
                + f"; stop at {stop['step']} saved {stop['saved']:.2f} loss {stop['loss']:+.3f}"
                + f" (oracle {row['oracle_saved']:.2f})")
    summaries = {name: summary(r) for name, r in rows.items()}
    aside = [r for r in rows["logs"] if r["held_out"]]
    tuned = [r for r in rows["logs"] if not r["held_out"]]
    if aside:
        summaries["logs_held_out"], summaries["logs_tuning"] = summary(aside), summary(tuned)
    pooled = [r for rs in rows.values() for r in rs]
    if not pooled:
        raise SystemExit("no curves: commit curves under docs/results/curves/ or give --logs DIR")
    summaries["pooled"] = summary(pooled)
    print_sets(summaries, args.held_out)
    results.finish(summaries, line("", summaries["pooled"]))


def print_sets(summaries: dict, held_out: str) -> None:
    """One line per set (and, when a log was kept aside, for it and for the logs tuned on)."""
    for name in ("testbed", "smollm2", "logs"):
        if summaries.get(name):
            console.print(line(f"set={name}", summaries[name]))
    if summaries.get("logs_held_out"):
        console.print(line(f"set=logs held-out ({held_out})", summaries["logs_held_out"]))
        console.print(line("set=logs tuning", summaries["logs_tuning"]))


def report(path: Path) -> None:
    """Reprint the set lines and the last line of a committed result file."""
    try:
        record = json.loads(path.read_text())
        summaries, held_out = record["summary"], record["settings"].get("held_out", "gemma")
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise SystemExit(f"--report {path}: not a bench/forecast.py result file ({err})")
    print_sets(summaries, held_out)
    print(record["line"], flush=True)


if __name__ == "__main__":
    main()
