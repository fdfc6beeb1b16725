"""What a sweep shows: the live leaderboard (rich) and the report page (one self-contained HTML file: every trial's
curve with the forecast fan it was judged on, where each trial stopped, the compute spent against the full sweep).

Figures are matplotlib PNGs (Agg) inlined as base64, as in `rlcast report`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from rich.table import Table

from rlcast.forecasting import make_forecaster
from rlcast.io.atomic import write_text_atomic
from rlcast.io.records import html_record
from rlcast.tune.schedulers import ForecastScheduler
from rlcast.tune.sweep import Sweep

COLORS = {"finished": "green", "running": "cyan", "pending": "white", "stopped": "yellow", "crashed": "red",
          "skipped": "bright_black"}


def leaderboard(sweep: Sweep) -> Table:
    """The trials by rung reached, then score (the leader first), with their status, compute and latest forecast."""
    winner = sweep.winner
    done = sum(t.batches for t in sweep.trials)
    table = Table(title=f"rlcast tune: {sweep.scheduler.name} scheduler, rungs {sweep.rungs} generation batches, "
                        f"{done}/{sweep.budget * len(sweep.trials)} batches spent", title_justify="left")
    for col in ("#", "trial", "config", "status", "batches", "accuracy", "score", "forecast at budget"):
        table.add_column(col, justify="right" if col in ("#", "batches", "accuracy", "score") else "left")
    # the furthest rung first (scores of different rungs do not compare), then the score there
    order = sorted(sweep.trials, key=lambda t: (-t.rung, t.score() is None, -(t.score() or 0.0), t.index))
    for place, t in enumerate(order, 1):
        forecast = t.forecasts[-1] if t.forecasts else None
        table.add_row(str(place), t.id + (" *" if t is winner else ""), t.name,
                      f"[{COLORS.get(t.status, 'white')}]{t.status}[/]", str(t.batches),
                      f"{t.points[-1][1]:.3f}" if t.points else "-",
                      f"{t.score():.3f}" if t.score() is not None else "-",
                      f"{forecast['median']:.3f} [{forecast['low']:.3f}, {forecast['high']:.3f}]" if forecast else "-")
    return table


def _png(fig) -> str:
    import matplotlib.pyplot as plt  # heavy optional dependency: imported only when plotting

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fan(sweep: Sweep, trial, level: float):
    """(steps, low, high) of the forecast the trial was last judged on, from its last rung to the budget."""
    if not isinstance(sweep.scheduler, ForecastScheduler) or not trial.forecasts:
        return None
    last = trial.forecasts[-1]
    if last.get("by") != sweep.scheduler.forecaster:
        return None
    model = make_forecaster(sweep.scheduler.forecaster, seed=sweep.seed).fit(sweep.curve(trial, last["rung"]))
    steps = np.linspace(last["rung"], sweep.budget, 30)
    _, low, high = model.predict(steps).interval(level)
    return steps, low, high


def figures(sweep: Sweep) -> dict[str, str]:
    """{title: base64 PNG} of the three figures."""
    import matplotlib  # heavy optional dependency: imported only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy optional dependency: imported only when plotting

    winner = sweep.winner
    cmap = plt.get_cmap("tab20")
    out = {}
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for t in sweep.trials:
        if not t.points:
            continue
        color = cmap(t.index % 20)
        xs, ys = [p[0] for p in t.points], [p[1] for p in t.points]
        ax.plot(xs, ys, color=color, lw=2.4 if t is winner else 1.2, label=f"{t.id} {t.name}")
        fan = _fan(sweep, t, sweep.scheduler.level) if isinstance(sweep.scheduler, ForecastScheduler) else None
        if fan is not None and t.status == "stopped":
            ax.fill_between(fan[0], fan[1], fan[2], color=color, alpha=0.12)
        marker = {"stopped": "x", "crashed": "v", "finished": "o"}.get(t.status)
        if marker:
            ax.plot(xs[-1], ys[-1], marker=marker, color=color, ms=8)
    for r in sweep.rungs:
        ax.axvline(r, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("generation batches")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("curves (x: stopped, v: crashed, o: finished; shaded: the forecast a stopped trial was judged on)")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    out["Curves and forecast fans"] = _png(fig)

    fig, ax = plt.subplots(figsize=(10, 0.3 * len(sweep.trials) + 1.5))
    colors = {"finished": "tab:green", "stopped": "tab:orange", "crashed": "tab:red", "skipped": "lightgrey"}
    for row, t in enumerate(sweep.trials):
        ax.barh(row, t.batches, color=colors.get(t.status, "tab:blue"))
        ax.text(t.batches, row, f" {t.status}", va="center", fontsize=7)
    for r in sweep.rungs:
        ax.axvline(r, color="grey", lw=0.6, ls=":")
    ax.set_yticks(range(len(sweep.trials)), [f"{t.id} {t.name}" for t in sweep.trials], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("generation batches reached (dotted: the rungs)")
    ax.set_title("where each trial stopped")
    out["Where each trial stopped"] = _png(fig)

    c = sweep.compute()
    fig, ax = plt.subplots(figsize=(7, 2.6))
    for row, (label, spent, full) in enumerate((("generation batches", c["batches"], c["full_batches"]),
                                                ("backward passes", c["backward_passes"],
                                                 c["full_backward_passes"]))):
        ax.barh(row, full, color="lightgrey")
        ax.barh(row, spent, color="tab:blue")
        ax.text(full, row, f" {spent}/{full} = {spent / full:.2f}", va="center", fontsize=8)
    ax.set_yticks([0, 1], ["generation batches", "backward passes"])
    ax.set_title("compute spent (blue) against the full sweep (grey)")
    out["Compute against the full sweep"] = _png(fig)
    return out


def write_report(sweep: Sweep, path: Path, command: str | None, record: dict) -> Path:
    """The self-contained HTML page of the sweep at `path`."""
    winner = sweep.winner
    c = sweep.compute()
    rows = "".join(
        f"<tr><td>{t.id}</td><td>{html.escape(t.name)}</td><td>{t.status}</td><td>{t.batches}</td>"
        f"<td>{t.backward_passes}</td><td>{'' if t.score() is None else f'{t.score():.3f}'}</td>"
        f"<td>{html.escape(t.reason)}</td></tr>" for t in sweep.trials)
    images = "".join(f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
                     for title, b64 in figures(sweep).items())
    head = (f"<p>Winner: <b>{html.escape(winner.name)}</b> ({winner.id}), final held-out accuracy "
            f"{winner.score():.3f} (mean of its last 3 checkpoints).</p>" if winner else "<p>No trial finished.</p>")
    line = f"<pre>{html.escape(command)}</pre>" if command else ""
    page = (f"<!DOCTYPE html>\n{html_record(record)}\n<html><head><meta charset='utf-8'><title>rlcast tune</title>"
            f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:2px 8px;"
            f"border-bottom:1px solid #ddd;font-size:13px}}img{{max-width:100%}}</style></head><body>"
            f"<h1>rlcast tune: {sweep.scheduler.name} scheduler</h1>{head}{line}"
            f"<p>Compute: {c['batches']} of {c['full_batches']} generation batches ({c['batch_fraction']:.2f} of the "
            f"full sweep), {c['backward_passes']} of {c['full_backward_passes']} backward passes "
            f"({c['pass_fraction']:.2f}). Rungs: {sweep.rungs} generation batches.</p>{images}"
            f"<h2>Trials</h2><table><tr><th>id</th><th>config</th><th>status</th><th>batches</th>"
            f"<th>backward passes</th><th>score</th><th>why it stopped</th></tr>{rows}</table></body></html>\n")
    return write_text_atomic(path, page)
