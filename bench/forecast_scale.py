"""What `rlcast forecast` costs as a run's curve grows: seconds and peak memory at 10^3 to 10^5 points.

For each size N: a run folder whose run.json holds N checkpoints (a saturating curve scored on 1000 prompts, with
binomial noise, its 95 % intervals and a train reward each), forecast end to end as `rlcast forecast RUN
--no-weights` does (`rlcast.apps.forecast`: `prepare` reads run.json into a curve, `forecast_curve` fits the
combination with its rolling-origin back-test and summarises it; both timed, after a warm-up on 10 points). Seconds
are wall time; peak_mb is the peak of the memory Python allocates during the forecast (tracemalloc: numpy's arrays
included), above what was held before. The back-test is capped
(forecasting.combine: 12 origins x 12 scored steps) and every fit sees at most forecasting.base.MAX_POINTS pooled
points, so only reading and pooling grow with N (issue 27: 1000 checkpoints were killed at 23.5 GB before). One line
per size:

    points=1000 seconds=S peak_mb=M
"""

from __future__ import annotations

import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from common import Results, add_out, console, new_parser
from rlcast.apps.forecast import forecast_curve, prepare

DURATION = "~1 min on 2 CPU cores (10^3, 10^4 and 10^5 points)"
SIZES = (1000, 10_000, 100_000)


def write_run(folder: Path, points: int, seed: int = 0) -> Path:
    """A run folder with `points` scored checkpoints (steps 1..points) and a plan of 2 x points steps."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, points + 1)
    truth = 0.6 - 0.35 / (1 + steps / (0.1 * points))
    acc = rng.binomial(1000, truth) / 1000
    half = 1.96 * np.sqrt(truth * (1 - truth) / 1000)
    entries = [{"step": int(s), "path": f"checkpoint-{s}", "accuracy": float(a), "ci": [float(a - h), float(a + h)],
                "train_reward": float(t - 0.05)} for s, a, h, t in zip(steps, acc, half, truth)]
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "format": 2, "base": "base", "task": "arith", "base_accuracy": 0.25, "base_ci": [0.23, 0.28],
        "config": {"steps": 2 * points, "eval_prompts": 1000, "task": "arith"}, "checkpoints": entries,
        "status": "running"}))
    return folder


def measure(points: int, scratch: Path) -> dict:
    """One size: seconds end to end, of which reading (`prepare`: run.json into a curve) and forecasting
    (`forecast_curve`: the combination's fit, back-test and summaries), and the peak memory."""
    run = write_run(scratch / f"run-{points}", points)
    tracemalloc.start()
    start = time.perf_counter()
    ((curve, target),) = prepare([run], weights=False)
    read, read_peak = time.perf_counter(), tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    result = forecast_curve(curve, target)
    seconds, fit_peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"points": points, "seconds": seconds, "read_seconds": read - start, "fit_seconds": seconds - (read - start),
            "peak_mb": max(read_peak, fit_peak) / 2 ** 20, "read_peak_mb": read_peak / 2 ** 20,
            "fit_peak_mb": fit_peak / 2 ** 20, "forecast": result.combined, "target": result.target_step}


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of points, comma-separated "
                                                                           "(default: %(default)s)")
    add_out(parser, "the result file")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: expected numbers, comma-separated")
    if any(s < 10 for s in sizes):
        parser.error(f"--sizes {args.sizes!r}: every size must be >= 10 points")
    torch.set_num_threads(1)
    results = Results(__file__, args)
    with tempfile.TemporaryDirectory(prefix="rlcast-forecast-scale-") as scratch:
        measure(10, Path(scratch))  # imports and first-call caches, outside the measured peaks
        for points in sizes:
            row = measure(points, Path(scratch))
            results.add(row)
            console.print(f"points={points} seconds={row['seconds']:.1f} peak_mb={row['peak_mb']:.0f} "
                          f"(reading {row['read_seconds']:.1f} s {row['read_peak_mb']:.0f} MB, forecasting "
                          f"{row['fit_seconds']:.1f} s {row['fit_peak_mb']:.0f} MB)")
    last = results.rows[-1]
    results.finish({"rows": len(results.rows)},
                   f"points={last['points']} seconds={last['seconds']:.1f} peak_mb={last['peak_mb']:.0f}")


if __name__ == "__main__":
    main()
