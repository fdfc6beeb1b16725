"""What the user sees of the jumps: metrics for the trainer's loggers, one printed line per attempt, a summary."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


def metrics(entry: dict, steps_gained: int) -> dict:
    """An attempt as `accelerate/*` numbers for the trainer's loggers (strings and None stay in the jump log)."""
    values = {"kept": float(entry["kept"]), "rolled_back": float(entry["rolled_back"]),
              "rejected": float(entry["rejected"]), "failed": float(entry["failed"]),
              "horizon": entry["horizon"], "steps_gained": steps_gained, "backtest_error": entry["backtest_error"],
              "reward_before": entry["reward_before"], "reward_after": entry["reward_after"]}
    values |= {f"backtest/{name}": error for name, error in entry["backtest"].items()}
    return {f"accelerate/{k}": v for k, v in values.items() if v is not None}


def print_attempt(entry: dict) -> None:
    """One line on stderr: the jump, the check reward (train prompts) before and after, kept or rolled back and
    why."""
    if entry["method"] is None:
        text = f"step {entry['step']}: no jump ({escape(entry['reason'])})"
    else:
        after = "n/a" if entry["reward_after"] is None else f"{entry['reward_after']:.3f}"
        before = "n/a" if entry["reward_before"] is None else f"{entry['reward_before']:.3f}"
        verdict = "[green]kept[/]" if entry["kept"] else f"[red]rolled back[/] ({escape(entry['reason'])})"
        text = (f"step {entry['step']}: jump +{entry['horizon']} with {escape(entry['method'])} "
                f"check reward {before} -> {after}: {verdict}")
    Console(stderr=True).print(f"[bold]accelerate[/] {text}", highlight=False, soft_wrap=True)


def summary(jumps: list[dict], seconds: dict, train_steps: int) -> dict:
    """Jumps tried / kept, steps gained, and the acceleration's cost in step-equivalents: the time of its checks,
    back-tests, jumps and snapshots over the mean optimizer-step time."""
    step_time = seconds["train"] / train_steps if train_steps else float("nan")
    overhead = seconds["eval"] + seconds["backtest"] + seconds["jump"] + seconds["snapshot"]
    return {"attempts": len(jumps), "kept": sum(j["kept"] for j in jumps),
            "rolled_back": sum(j.get("rolled_back", False) for j in jumps),
            "steps_gained": sum(j["horizon"] for j in jumps if j["kept"]),
            "mean_step_seconds": step_time, "seconds": dict(seconds),
            "cost_step_equivalents": overhead / step_time if step_time == step_time and step_time > 0 else None}
