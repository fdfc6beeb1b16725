"""The curve library: plain runs of a preset over a learning-rate x rollout-reuse grid, each curve committed.

For each seed, learning rate and reuse mu (TRL's num_iterations): a plain run of `--batches` generation batches,
scored on the preset's held-out prompts every `--save-every` batches (bench/common.plain_run: reused when finished,
resumed when interrupted). Each finished run's curve goes to LIBRARY/PRESET/seedS-lrX-muM/:

    run.json            the run's manifest (config, held-out accuracy and train reward per checkpoint)
    trainer_state.json  TRL's log history of the run (every logged metric, e.g. frac_reward_zero_std)
    provenance.json     machine, commit, package versions and the command that trained it

so `rlcast forecast` and the forecast and tune benchmarks replay a curve without its checkpoints (kilobytes each).
With --hp KEY=VALUE overrides the preset folder is named by them too (PRESET+KEY=VALUE, e.g.
`steady+num_generations=4`), and so is a --batches other than 300 (`steady+batches=600`), so a variant of the preset
never mixes with its grid.
A curve already in the library is not trained again. Several processes started with the same arguments share the
grid: each claims a run with a claim file in --out before training it (a claim whose process is gone is taken over).

    .venv/bin/python bench/curves.py --seeds 100,0,1,2 --out /work/runs/library &   # two workers on two cores
    .venv/bin/python bench/curves.py --seeds 100,0,1,2 --out /work/runs/library &
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from common import (Results, add_preset, add_seeds, console, new_parser, plain_run, reuse_rollouts, run_name,
                    train_config)
from rlcast.io.atomic import write_text_atomic
from rlcast.io.manifest import Manifest

DURATION = "~10 h on 2 CPU cores for the default grid (4 seeds x 5 learning rates x mu 1, 2, 4; mu 4 ~10 min a run)"
LIBRARY = Path(__file__).resolve().parent.parent / "docs" / "results" / "curves"
BATCHES = 300  # generation batches of the library's grid


def claim(claims: Path, name: str) -> bool:
    """Take the run `name` for this process: True when its claim file is now ours (a dead owner's is taken over)."""
    path = claims / name
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(path.read_text() or 0)
            except (OSError, ValueError):
                return False
            if owner == os.getpid():
                return True
            try:
                os.kill(owner, 0)
                return False  # alive: another worker trains it
            except ProcessLookupError:
                path.unlink(missing_ok=True)
                continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def commit_curve(run: Path, destination: Path, record: dict) -> None:
    """Copy the run's curve (run.json, TRL's log history of its last checkpoint) and `record` to `destination`."""
    last = max(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(last.read_text())["log_history"]
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(run / "run.json", staging / "run.json")
    write_text_atomic(staging / "trainer_state.json", json.dumps({"log_history": history}, indent=1) + "\n")
    write_text_atomic(staging / "provenance.json", json.dumps(record, indent=1) + "\n")
    staging.rename(destination)


def main() -> None:
    parser = new_parser(__doc__)
    add_preset(parser)
    parser.add_argument("--learning-rates", default="3e-5,6e-5,1.2e-4,2.4e-4,4.8e-4")
    parser.add_argument("--mu", default="1,2,4", help="rollout reuse: TRL num_iterations values")
    add_seeds(parser, "100,0,1,2")
    parser.add_argument("--batches", type=int, default=BATCHES, help="generation batches per run")
    parser.add_argument("--save-every", type=int, default=10, help="in generation batches")
    parser.add_argument("--library", type=Path, default=LIBRARY, help="where the curves go (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="where the runs (checkpoints) and claims go")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the testbed is tiny: one thread beats several fighting over 2 (shared) cores
    results = Results(__file__, args)
    claims = args.out / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    grid = [(seed, float(lr), int(mu)) for seed in args.seeds for mu in args.mu.split(",")
            for lr in args.learning_rates.split(",")]
    folder = args.preset + "".join(f"+{hp}" for hp in sorted(args.hp))
    folder += f"+batches={args.batches}" if args.batches != BATCHES else ""
    variant = folder != args.preset  # its runs' folders in --out (and their claims) carry the variant's name
    for seed, lr, mu in grid:
        name = run_name(seed, lr, mu)
        destination = args.library / folder / name
        if destination.exists() or not claim(claims, f"{folder}-{name}" if variant else name):
            continue
        config = reuse_rollouts(train_config(args, seed=seed, learning_rate=lr, steps=args.batches,
                                             save_every=args.save_every), mu)
        run = plain_run(args.out / (f"{folder}-{name}" if variant else name), config)
        commit_curve(run, destination, results.provenance)
        final = Manifest.read(run / "run.json").checkpoints[-1].accuracy
        results.add({"name": name, "seed": seed, "learning_rate": lr, "mu": mu, "final": final})
        console.print(f"{name}: final {final:.3f} -> {destination}")
    done = sorted(p.name for p in (args.library / folder).glob("seed*-lr*-mu*") if p.is_dir())
    results.finish({"curves": done}, f"curves={len(done)} grid={len(grid)} preset={folder}")


if __name__ == "__main__":
    main()
