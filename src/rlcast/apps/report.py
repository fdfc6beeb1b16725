"""One self-contained HTML report of a run: what it shows in words first, then the plots (accuracy, spectra, rank-1
energy, R^2 heat maps, u1 trajectories), then the tables.

Plots are matplotlib PNGs (Agg backend) inlined as base64, so the file opens offline and can be mailed around.
Results already saved in the run's output folder (RUN/rlcast/dynamics.json, dominance.json) are reused; what is
missing is computed here (dominance is not: it evaluates several models, run `rlcast dominance` for it).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from rlcast.apps.dominance import rank1_verdict
from rlcast.apps.dynamics import analyze_dynamics, dynamics_names
from rlcast.apps.forecast import default_target, forecast_curve
from rlcast.core.numerics import align_signs
from rlcast.core.trajectory import build_trajectory
from rlcast.errors import RlcastError
from rlcast.evaluation.tasks import task_variant
from rlcast.forecasting import LEVEL, checked, read_curve
from rlcast.forecasting.curves import with_weights
from rlcast.io.atomic import write_text_atomic
from rlcast.io.manifest import Manifest
from rlcast.io.outputs import check_output
from rlcast.io.reader import RunReader
from rlcast.io.records import html_record, json_safe, output_record
from rlcast.io.selections import parse_name

RESULTS = "rlcast"  # the run's output folder: RUN/rlcast/
STEP = "optimizer step"  # the unit of every step axis and of the title


def results_dir(run) -> Path:
    """Where a run's analysis outputs live: RUN/rlcast/ (./rlcast/ for runs given without a root folder)."""
    return (Path(run.root) if run.root else Path.cwd()) / RESULTS


def load_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise RlcastError(f"{path}: not valid JSON ({err})") from None


# --- plots ---

def _png(fig) -> str:
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _grid(modules: list[dict], key: str) -> tuple[list, list[str], torch.Tensor]:
    """Layer x module-type matrix of one per-module value (nan where missing)."""
    layers = sorted({m["layer"] for m in modules}, key=lambda x: (x is None, x))
    kinds = sorted({m["kind"] for m in modules})
    grid = torch.full((len(layers), len(kinds)), math.nan)
    for m in modules:
        if m[key] is not None:
            grid[layers.index(m["layer"]), kinds.index(m["kind"])] = m[key]
    return layers, kinds, grid


def heatmaps(modules: list[dict], panels: list[tuple[str, str]], vmin: float, vmax: float, cmap: str,
             spread_below: bool = False) -> str:
    """Side-by-side layer x module-type heat maps, one per (key, title), the true values written in the cells.

    `spread_below`: values under `vmin` (a held-out R^2 of -37) keep distinct colours on a log scale below `vmin`
    down to the panel's minimum, instead of all looking like `vmin`."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting
    from matplotlib.colors import FuncNorm  # heavy: imported only when plotting

    n_layers = len({m["layer"] for m in modules})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 0.55 * n_layers + 2.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        layers, kinds, grid = _grid(modules, key)
        low = min([vmin] + [v for _, v in _cells(grid)]) if spread_below else vmin
        norm = FuncNorm(_split_scale(vmin, vmax), vmin=low, vmax=vmax) if low < vmin else None
        image = ax.imshow(grid.clamp(low, vmax).numpy(), cmap=cmap, aspect="auto", norm=norm,
                          **({} if norm else {"vmin": vmin, "vmax": vmax}))
        ax.set_xticks(range(len(kinds)), kinds, rotation=60, ha="right", fontsize=9)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=9)
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=11)
        if grid.numel() <= 200:
            for (i, j), value in _cells(grid):
                r, g, b, _ = image.cmap(image.norm(min(max(value, low), vmax)))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells
                ax.text(j, i, f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}", ha="center", va="center",
                        fontsize=9, color="white" if dark else "black")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _png(fig)


def _split_scale(vmin: float, vmax: float):
    """Colour scale for FuncNorm (numpy in, numpy out): linear on [vmin, vmax], logarithmic below vmin, so outliers
    stay distinguishable."""
    span = vmax - vmin

    def forward(x):
        x = np.asarray(x, dtype=float)
        below = vmin - span * np.log10(1 + (vmin - np.minimum(x, vmin)) / span)
        return np.where(x >= vmin, x, below)

    def inverse(y):
        y = np.asarray(y, dtype=float)
        below = vmin - span * (10 ** ((vmin - np.minimum(y, vmin)) / span) - 1)
        return np.where(y >= vmin, y, below)

    return forward, inverse


def _cells(grid: torch.Tensor):
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not math.isnan(float(grid[i, j])):
                yield (i, j), float(grid[i, j])


def accuracy_plot(accuracy: dict[int, float], dominance: dict | None, xlabel: str = STEP) -> str | None:
    """Accuracy against the step (manifest accuracies), with the rank-k models of `rlcast dominance` marked; `xlabel`
    names the step axis in the title's unit (`step_axis`)."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    if not accuracy and not dominance:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    if accuracy:
        steps = sorted(accuracy)
        ax.plot(steps, [accuracy[s] for s in steps], "o-", color="tab:blue", label="checkpoints")
    if dominance:
        step = dominance["step"]
        for i, s in enumerate(dominance["ranks"]):
            ax.errorbar(step + (i + 1) * 0.01 * max(step, 1), s["accuracy"],
                        yerr=[[s["accuracy"] - s["ci_low"]], [s["ci_high"] - s["accuracy"]]], fmt="s", capsize=3,
                        label=f"rank-{s['k']} model (dominance eval)")
        full = dominance["full"]
        ax.errorbar(step, full["accuracy"], yerr=[[full["accuracy"] - full["ci_low"]],
                                                  [full["ci_high"] - full["accuracy"]]],
                    fmt="D", color="black", capsize=3, label="full checkpoint (dominance eval)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def spectrum_plot(traj) -> str:
    """Energy share s_i^2 / ||dW||_F^2 of the top singular values at the last checkpoint, mean per module type."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting


    by_kind: dict[str, list[torch.Tensor]] = {}
    for name, mt in traj.modules.items():
        if mt.u is None or float(mt.fro[-1]) == 0:
            continue
        by_kind.setdefault(parse_name(name)[1], []).append(mt.sigma[-1].double() ** 2 / float(mt.fro[-1]) ** 2)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for kind, shares in sorted(by_kind.items()):
        mean = torch.stack(shares).mean(0)
        axes[0].semilogy(range(1, len(mean) + 1), mean.numpy(), "o-", ms=3, label=kind)
    axes[0].set_xlabel("singular value index i")
    axes[0].set_ylabel("s_i^2 / ||dW||_F^2")
    axes[0].set_title(f"spectrum of dW at step {traj.steps[-1]} (mean per module type)", fontsize=10)
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    for kind in sorted(by_kind):
        energy = torch.stack([mt.rank1_energy for n, mt in traj.modules.items()
                              if mt.u is not None and parse_name(n)[1] == kind]).nanmean(0)
        axes[1].plot(traj.steps, energy.numpy(), "o-", ms=3, label=kind)
    axes[1].set_xlabel(STEP)
    axes[1].set_ylabel("rank-1 energy s_1^2 / ||dW||_F^2")
    axes[1].set_title("rank-1 energy over training (mean per module type)", fontsize=10)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def u1_projection_plot(traj, modules: list[dict], n: int = 6) -> str:
    """2-D PCA of the sign-aligned u1(t) of the `n` modules with the most rank-1 energy, coloured by step."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting


    picked = sorted(modules, key=lambda m: -(m["rank1_energy_last"] or 0))[:n]
    cols = min(3, len(picked))
    rows = math.ceil(len(picked) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.5 * rows), squeeze=False)
    for ax, m in zip(axes.flat, picked):
        u = align_signs(traj.modules[m["name"]].u[:, :, 0].double())
        centred = u - u.mean(0)
        _, s, vt = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        share = (s[:2] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300)
        ax.plot(xy[:, 0], xy[:, 1], "-", color="0.7", lw=1)
        points = ax.scatter(xy[:, 0], xy[:, 1], c=traj.steps, cmap="viridis", s=22, zorder=3)
        ax.annotate("start", xy[0].tolist(), fontsize=7)
        ax.set_title(f"{m['name'].removesuffix('.weight')}\nPC1+PC2 = {float(share):.0%} of variance", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(points, ax=ax, shrink=0.8, label=STEP)
    for ax in list(axes.flat)[len(picked):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def fan_chart(curve, result) -> str:
    """Checkpoints, each forecaster's median and 90 % band (thin), the combination's (bold), up to the target."""
    import matplotlib.pyplot as plt  # heavy: imported only when plotting

    model = result.model
    steps = np.unique(np.concatenate([np.linspace(curve.steps[curve.steps > 0][0], result.target_step, 80),
                                      [curve.last]]))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, member) in enumerate(model.members_.items()):
        med, low, high = member.predict(steps).interval(LEVEL)
        colour = colours[(i + 1) % len(colours)]
        ax.fill_between(steps, low, high, color=colour, alpha=0.08, lw=0)
        ax.plot(steps, med, "-", color=colour, lw=1, label=f"{name} (alongside)" if name in model.shown_
                else f"{name} (weight {model.weights_[name]:.2f})")
    med, low, high = model.predict(steps).interval(LEVEL)
    ax.fill_between(steps, low, high, color="black", alpha=0.15, lw=0, label="combined, 90 %")
    ax.plot(steps, med, "k-", lw=2.2, label="combined")
    ax.errorbar(curve.steps, curve.accuracy, yerr=np.where(np.isfinite(curve.sd), 1.96 * curve.sd, 0), fmt="o",
                color="tab:blue", ms=4, capsize=2, label="checkpoints (95 % CI)")
    ax.axvline(curve.last, color="0.5", ls=":", lw=1)
    ax.set_xlabel(STEP)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"forecast of step {result.target_step} from the checkpoints up to step {curve.last}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def forecast_section(run, trajectory=None) -> str | None:
    """The forecast of the run's planned last step (a finished run: twice its last checkpoint): fan chart and table;
    None for a run of fewer than 3 checkpoints; a note naming `rlcast eval` when too few of them have accuracies.
    `trajectory` (the report's spectra) feeds the weight-based forecaster."""
    curve = read_curve(run)
    if len(run.checkpoints) < 3:
        return None
    try:
        curve = checked(curve)
    except RlcastError as err:
        return f"<p class=note>no forecast: {html.escape(str(err))}</p>"
    if trajectory is not None:
        curve = with_weights(curve, run, trajectory=trajectory)
    target = default_target(curve)
    result = forecast_curve(curve, target if target > curve.last else 2 * curve.last)
    rows = [{"forecaster": name, "weight": f.get("weight"), "median": f.get("median"), "low": f.get("low"),
             "high": f.get("high"), "note": f.get("reason", "")} for name, f in result.forecasters.items()]
    rows.append({"forecaster": "combined", "weight": 1.0, **result.combined, "note": result.hint})
    return (_img(fan_chart(curve, result), "forecast fan chart")
            + table(rows, ["forecaster", "weight", "median", "low", "high", "note"])
            + f"<p class=note>held-out accuracy at step {result.target_step}, 90 % intervals (a checkpoint's score, "
              f"its evaluation noise included); weights from a rolling-origin back-test on the run's own checkpoints "
              f"(<code>rlcast forecast RUN</code> gives every figure).</p>")


# --- HTML ---

def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


LABELS = {  # column and summary keys of dynamics.json, in words
    "n": "modules", "n_modules": "modules", "fro_last": "update norm (last)",
    "rank1_energy_last": "rank-1 energy (last)", "step_r2": "R^2 s1u1 vs step", "step_r2_heldout": "R^2 held out",
    "step_relerr_heldout": "rel. error held out", "pls_r2": "PLS R^2", "pls_r2_heldout": "PLS R^2 held out",
    "pls_mae_heldout": "PLS abs. error held out", "relex_explained": "RELEX explained",
    "cos_u_first": "cos u1 first-last",
    "cos_v_first": "cos v1 first-last", "well_defined": "s1/s2 >= 1.01 share",
    "mean_step_r2": "mean R^2 of s1 u1 against the step (in sample)",
    "mean_step_r2_heldout": "mean R^2 of s1 u1 against the step (held out)",
    "mean_step_relerr_heldout": "mean relative error of s1 u1 (held out)",
    "mean_pls_r2": "mean PLS R^2 against accuracy (in sample)",
    "mean_pls_r2_heldout": "mean PLS R^2 against accuracy (held out)",
    "mean_relex_explained": "mean RELEX explained variance (top temporal direction)",
    "mean_rank1_energy_last": "mean rank-1 energy at the last checkpoint",
    "mean_fro_last": "mean update norm at the last checkpoint",
    "share_step_r2_heldout_gt_0.9": "share of modules with held-out step R^2 > 0.9",
    "share_step_r2_heldout_lt_0": "share of modules with held-out step R^2 < 0 (worse than a constant)",
    "share_step_r2_gt_0.9": "share of modules with in-sample step R^2 > 0.9",
    "share_pls_r2_gt_0.9": "share of modules with in-sample PLS R^2 > 0.9",
    "share_pls_r2_heldout_gt_0.9": "share of modules with held-out PLS R^2 > 0.9",
    "mean_cos_u_first_to_last": "mean |cos| of u1, first to last checkpoint",
    "mean_cos_v_first_to_last": "mean |cos| of v1, first to last checkpoint",
    "mean_well_defined": "share of checkpoints with a well-defined top direction (s1/s2 >= 1.01)",
}


def label(key: str) -> str:
    return LABELS.get(key, key)


def table(rows: list[dict], columns: list[str] | None = None, labels: dict | None = None) -> str:
    """An HTML table in a box that scrolls sideways when it is wider than the page; `labels` renames headers."""
    if not rows:
        return "<p>(none)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape((labels or {}).get(c, c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else "<p>(no data)</p>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}
.scroll{overflow-x:auto;max-width:100%}.verdict{font-size:15px;line-height:1.5}
.note{color:#555;font-size:13px}h2{border-bottom:1px solid #ddd;padding-bottom:4px}"""


def dominance_rows(dom: dict) -> list[dict]:
    rows = [{"model": m, "accuracy": dom[m]["accuracy"]} for m in ("base", "full")]
    for s, r in zip(dom["ranks"], dom["recovery"]):
        rows.append({"model": s["label"], "accuracy": s["accuracy"], "acc_k / acc_full": r["recovery"],
                     "95% CI": _ci(r["recovery_ci"]), "gain recovery": r["gain_recovery"],
                     "gain 95% CI": _ci(r["gain_recovery_ci"])})
    return rows


DOMINANCE_COLUMNS = ["model", "accuracy", "acc_k / acc_full", "95% CI", "gain recovery", "gain 95% CI"]


def _ci(ci) -> str:
    return "" if ci is None or None in ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _share(value) -> str:
    """A share in words; n/a when undefined (e.g. no gain over the base to recover)."""
    return "n/a" if _number(value) is None else f"{value:.0%}"


# published figures the verdict sets this run against (AlphaRL arXiv 2510.00553, NExt arXiv 2604.11446)
PUBLISHED = {"rank1_accuracy": ("AlphaRL", 0.992), "pls_r2": ("AlphaRL", 0.914),
             "share_step_r2_heldout_lt_0": ("NExt", "more than half")}


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def steps_per_batch(manifest: Manifest | None) -> float | None:
    """Optimizer steps per generation batch of an RL run (run.json's `generation_batches` of its last checkpoint);
    None when the run does not record them (SFT, a run rlcast did not train)."""
    last = next((e for e in reversed(manifest.checkpoints) if e.generation_batches), None) if manifest else None
    return last.step / last.generation_batches if last else None


def _per_batch(ratio: float) -> str:
    return f"{ratio:.0f}" if abs(ratio - round(ratio)) < 0.05 else f"{ratio:.1f} on average"


def step_axis(manifest: Manifest | None) -> str:
    """The step axis label, saying how many optimizer steps make a generation batch when the run records it."""
    ratio = steps_per_batch(manifest)
    return STEP if ratio is None else f"{STEP} ({_per_batch(ratio)} per generation batch)"


def story(accuracy: dict[int, float], manifest: Manifest | None) -> str:
    """The run's story in one sentence: held-out accuracy from the base (or first checkpoint) to the last, its gain
    and its peak, counted in optimizer steps and, for RL runs, generation batches (and how many steps make one); for
    a run without accuracies, the command that scores them."""
    if len(accuracy) < 2:
        return ("No held-out accuracy is recorded for this run's checkpoints: rlcast eval RUN scores the base and "
                "every checkpoint and records them in RUN/run.json.")
    first, last = min(accuracy), max(accuracy)
    start = "the base" if first == 0 else f"step {first}"
    entry = next((e for e in manifest.checkpoints if e.step == last), None) if manifest else None
    ratio = steps_per_batch(manifest)
    cost = f"{last} optimizer steps" + (f", {entry.generation_batches} generation batches ({_per_batch(ratio)} "
                                        f"optimizer step{'' if ratio == 1 else 's'} per batch)"
                                        if entry and entry.generation_batches and ratio else "")
    peak = max(accuracy, key=lambda s: (accuracy[s], -s))
    peaked = (f", after a peak of {accuracy[peak]:.3f} at step {peak}" if peak not in (first, last)
              and accuracy[peak] - accuracy[last] > 0.01 else "")
    return (f"Held-out accuracy went from {accuracy[first]:.3f} ({start}) to {accuracy[last]:.3f} at the last "
            f"checkpoint, step {last}: {accuracy[last] - accuracy[first]:+.3f} in {cost}{peaked}.")


def verdict(overall: dict, dom: dict | None, accuracy: dict[int, float]) -> tuple[list[str], list[dict]]:
    """What the run shows, in words, from the numbers: the gain, the rank-1 share of it, whether the rank-1
    trajectories stay linear out of sample; and the table of this run's figures next to the papers'."""
    said, rows = [], []
    rank1 = next(((s, r) for s, r in zip(dom["ranks"], dom["recovery"]) if s.get("k") == 1), None) if dom else None
    if rank1:
        score, rec = rank1
        judged = rank1_verdict(dom)  # holds / does not hold / not measurable, as `rlcast dominance` prints it
        where = f"(step {dom['step']}, {dom['n_prompts']} prompts, paired bootstrap 95 %)"
        if judged.state == "not measurable":  # a share with a 250-point interval is no finding: not stated as one
            said.append(f"Keeping only the top singular direction of every update (rank 1) keeps "
                        f"{_share(rec['recovery'])} of the full model's accuracy {_ci(rec['recovery_ci'])} {where}; "
                        f"its share of the gain over the base is not measurable on this many prompts.")
        else:
            said.append(f"Keeping only the top singular direction of every update (rank 1) keeps "
                        f"{_share(rec['recovery'])} of the full model's accuracy {_ci(rec['recovery_ci'])} and "
                        f"{_share(rec['gain_recovery'])} of the gain over the base {_ci(rec['gain_recovery_ci'])} "
                        f"{where}.")
        said.append(html.escape(judged.text[0].upper() + judged.text[1:] + "."))
        if judged.state != "not measurable" and rec["gain_recovery_ci"][1] < 0:  # below the base, beyond noise
            said.append(f"The rank-1 model scores below the base ({score['accuracy']:.3f} against "
                        f"{dom['base']['accuracy']:.3f}): the update's top direction alone undoes part of what the "
                        f"run learned. The published weight-extrapolation methods (AlphaRL, NExt, RELEX) assume "
                        f"rank-1 dominance; it does not hold on this run, so extrapolating along that direction moves "
                        f"away from the run's gains rather than ahead of them.")
        rows.append({"measure": "rank-1 model / full model accuracy", "this run": rec["recovery"],
                     "published": f"{PUBLISHED['rank1_accuracy'][1]} ({PUBLISHED['rank1_accuracy'][0]})"})
    else:
        said.append("The rank-1 share of the gain is not measured yet: run <code>rlcast dominance RUN</code>.")
    energy = _number(overall.get("mean_rank1_energy_last"))
    if energy is not None:
        said.append(f"At the last checkpoint the top direction holds {energy:.0%} of an update's energy on average.")
    step_in, step_out = _number(overall.get("mean_step_r2")), _number(overall.get("mean_step_r2_heldout"))
    below = _number(overall.get("share_step_r2_heldout_lt_0"))
    if step_in is not None and step_out is not None:
        linear_in = "linear in the step in sample" if step_in >= 0.5 else "not linear in the step even in sample"
        holds = ("and the line holds on later checkpoints" if step_out >= 0.5 else
                 "but the line does not hold on later checkpoints" if step_out < 0 else
                 "and the line only partly holds on later checkpoints")
        said.append(f"The rank-1 trajectories s1 u1 are {linear_in} (mean R^2 {step_in:.2f}), {holds} (held-out R^2 "
                    f"{step_out:.2f}" + (f"; {below:.0%} of modules below 0" if below is not None else "") + ").")
    if below is not None:
        rows.append({"measure": "share of modules with held-out step R^2 < 0", "this run": below,
                     "published": f"{PUBLISHED['share_step_r2_heldout_lt_0'][1]} "
                                  f"({PUBLISHED['share_step_r2_heldout_lt_0'][0]})"})
    pls_in, pls_out = _number(overall.get("mean_pls_r2")), _number(overall.get("mean_pls_r2_heldout"))
    if pls_in is not None:
        said.append(f"Accuracy is predicted from the rank-1 trajectory (PLS) with R^2 {pls_in:.2f} in sample"
                    + (f" and {pls_out:.2f} held out." if pls_out is not None else "."))
        rows.append({"measure": "PLS R^2 of accuracy on s1 u1 (in sample)", "this run": pls_in,
                     "published": f"{PUBLISHED['pls_r2'][1]} ({PUBLISHED['pls_r2'][0]})"})
    return said, rows


def build_report(run, out: Path | None = None, task: str | None = None, selection: str = "blocks", rank: int = 8,
                 progress: bool = True, cache_dir: Path | None = None, task_args: dict | None = None,
                 verdict_notes: Sequence[str] = (),
                 lead: Sequence[tuple[str, str]] = (), force: bool = False) -> Path:
    """Write the HTML report of `run` to `out` (default RUN/rlcast/report.html) and return its path.

    Order: the verdict in words (plus `verdict_notes`, e.g. the demo's acceleration verdict) next to the papers'
    figures; the `lead` sections (title, HTML), e.g. the demo's plain-vs-accelerated comparison; the plots; the
    tables last."""
    import matplotlib  # heavy: imported only when plotting

    matplotlib.use("Agg")
    folder = results_dir(run)
    out = check_output(Path(out) if out else folder / "report.html", "report", run=run, force=force,
                       option="--out FILE")
    names = dynamics_names(RunReader(run), selection)
    if not names:
        raise RlcastError(f"{run.root or run.base}: no 2-D tensors changed in selection {selection!r}")
    traj = build_trajectory(run, rank=rank, cache_dir=cache_dir, progress=progress, names=names)
    dyn = load_json(folder / "dynamics.json")
    dyn_note = f"read from {folder / 'dynamics.json'}"
    if dyn is None or not set(names) <= {m["name"] for m in dyn["modules"]}:
        dyn = json_safe(analyze_dynamics(run, trajectory=traj, task=task, selection=selection, progress=progress,
                                         task_args=task_args).to_json())
        dyn_note = "computed for this report"
    dom = load_json(folder / "dominance.json")
    dom_note = f"read from {folder / 'dominance.json'}: " if dom else ""
    modules = [m for m in dyn["modules"] if m["name"] in traj.modules]
    accuracy = {int(k): v for k, v in run.accuracy.items()} if run.accuracy else {}

    manifest = run.manifest or Manifest()
    lora = manifest.lora if manifest.lora is not None else any(c.kind == "lora" for c in run.checkpoints)
    task_name = task_variant(manifest.task, manifest.task_args) if manifest.task else task or "?"
    info = [{"field": "run", "value": str(run.root or run.base)}, {"field": "base", "value": str(run.base)},
            {"field": "algorithm", "value": manifest.algo or "?"},
            {"field": "LoRA", "value": lora},
            {"field": "task", "value": task_name},
            {"field": "checkpoints", "value": f"{len(traj.steps)} (steps {traj.steps[0]}..{traj.steps[-1]})"},
            {"field": "module selection", "value": f"{dyn['selection']} ({len(modules)} 2-D modules)"},
            {"field": "dynamics", "value": dyn_note},
            {"field": "accuracies for PLS", "value": dyn["accuracy_source"]}]
    overall = [{"measure": label(k), "value": v} for k, v in dyn["summary"]["overall"].items()]
    group_cols = ["group", "n", "fro_last", "rank1_energy_last", "step_r2", "step_r2_heldout", "step_relerr_heldout",
                  "pls_r2", "pls_r2_heldout", "relex_explained"]
    by_kind = [{"group": g, **v} for g, v in dyn["summary"]["by_kind"].items()]
    by_layer = [{"group": g, **v} for g, v in dyn["summary"]["by_layer"].items()]
    per_module = [{**m, "cos_u_first": m["cos_u_last"][0], "cos_v_first": m["cos_v_last"][0]} for m in modules]

    r2_panels = [("step_r2", "R^2 of s1*u1 vs step (in-sample)"),
                 ("step_r2_heldout", f"held-out R^2 (fit on first {dyn['holdout_fit']} ckpts)")]
    if any(m["pls_r2"] is not None for m in modules):
        r2_panels += [("pls_r2", "PLS R^2 vs accuracy (in-sample)"), ("pls_r2_heldout", "PLS R^2 (held-out)")]
    said, published = verdict(dyn["summary"]["overall"], dom, accuracy)
    said += [html.escape(note) for note in verdict_notes]
    story_ = (f"<p class=verdict>{html.escape(story(accuracy, manifest))}</p><p class=verdict>" + " ".join(said)
              + "</p>"
             + (table(published) + "<p class=note>published: AlphaRL (arXiv 2510.00553), NExt (arXiv 2604.11446), "
                "on 7B-scale runs.</p>" if published else ""))
    sections = [("What this run shows", story_), *lead]
    if forecast := forecast_section(run, traj):  # where the held-out accuracy is heading
        sections.append(("Forecast", forecast))
    sections += [  # plots
        ("Accuracy against the step", _img(accuracy_plot(accuracy, dom, step_axis(manifest)), "accuracy vs step")),
        ("Singular spectra and rank-1 energy", _img(spectrum_plot(traj), "spectra")
         + _img(heatmaps(modules, [("rank1_energy_last", f"rank-1 energy at step {traj.steps[-1]}")], 0, 1,
                         "viridis"), "rank-1 energy")),
        ("Rank-1 linear dynamics: R^2 heat maps",
         _img(heatmaps(modules, r2_panels, -1, 1, "RdYlGn", spread_below=True), "R^2 heat maps")
         + "<p class=note>R^2 = 1 - SSE/SST over all coordinates of the scored vectors, SST around their own mean; "
           "held-out scores use only the later checkpoints. PLS: one component, then OLS of accuracy on its score, "
           "over the checkpoints (not the base). Cells show the true values; colours are linear on [-1, 1] and "
           "logarithmic below -1, so a held-out R^2 of -37 looks different from -1.</p>"),
        ("2-D projection of the u1 trajectories", _img(u1_projection_plot(traj, modules), "u1 PCA")),
    ]
    sections += [  # tables
        ("Rank-1 dominance", (table(dominance_rows(dom), DOMINANCE_COLUMNS) + f"<p class=note>{html.escape(dom_note)}"
                              f"step {dom['step']}, task "
                              f"{html.escape(task_variant(dom['task'], dom.get('task_args')))}, "
                              f"{dom['n_prompts']} prompts (the same for every model), selection "
                              f"{dom['selection']}, rescale {dom['rescale']}; 95 % intervals from a paired bootstrap "
                              "over prompts.</p>") if dom else
         "<p class=note>not computed: run <code>rlcast dominance RUN</code> to add it.</p>"),
        ("Summary", table(overall)),
        ("By module type", table(by_kind, group_cols, LABELS)),
        ("By layer", table(by_layer, group_cols, LABELS)),
        ("Per module", table(per_module, ["name", "fro_last", "rank1_energy_last", "step_r2", "step_r2_heldout",
                                          "step_relerr_heldout", "pls_r2", "pls_r2_heldout", "pls_mae_heldout",
                                          "relex_explained", "cos_u_first", "cos_v_first", "well_defined"], LABELS)),
        ("Run", table(info)),
    ]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ratio = steps_per_batch(manifest)
    title = (f"{manifest.algo or '?'} on {task_name}, {STEP}s {traj.steps[0]}-{traj.steps[-1]}"
             + (f" ({_per_batch(ratio)} per generation batch)" if ratio else ""))
    body = "".join(f"<h2>{html.escape(heading)}</h2>\n{content}\n" for heading, content in sections)
    page = (f"<!doctype html>\n{html_record(output_record('report'))}\n<html><head><meta charset='utf-8'>"
            f"<title>rlcast: {html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>rlcast: {html.escape(title)}</h1><p class=note>"
            f"{html.escape(str(run.root or run.base))} &middot; {stamp}</p>\n{body}</body></html>")
    return write_text_atomic(out, page)
