"""The extrapolator interface, the registry of methods, `make_extrapolator`, and `write_prediction` (a fitted
method's prediction written as an HF model folder: what `rlcast extrapolate` and `rlcast continue` write).

Every method is a scikit-learn-style estimator: hyper-parameters in `__init__` (stored under the same names, so
`get_params()` reads them back), everything learned set by `fit(run)` under names ending in `_`, and `predict(step)`
pure: it streams `(base name, predicted float32 weight on the CPU)` for every base tensor, in base order, one tensor at
a time, and changes nothing on the estimator (call it twice, get the same tensors). `rlcast.io.writer.write_model` consumes
the stream without ever holding a model.

Where the work runs: `fit(run, device)` reads the run's tensors onto `device` (`reader_` reads there), so the
per-tensor arithmetic of `fit` and of `_tensor` runs there; what `fit` learns is small and kept on the CPU.
`predict(step, backend)` maps `_tensor` over the predicted tensors with `rlcast.core.backend.map_tensors` (threads of
this process, or one Ray task per tensor with the fitted estimator pickled once): every tensor is computed on one
torch thread and comes back on the CPU, so every backend streams bit-identical tensors.

Notation: W0 base, W_t weights after step t, dW_t = W_t - W0, t the last window step, T the target step.
Tensors outside the method's module selection, or that no checkpoint changes, are returned at the anchor (the base,
or the last window checkpoint for anchor="last").

Add a method of your own: subclass `Extrapolator`, implement `_tensor(name, step)` (and `_fit()` if it learns
anything), set `reference`, check it with `rlcast.extrapolation.check_extrapolator(MyMethod)` and register it under a name
with `@register("my-method")`; `make_extrapolator`, `rlcast compare` and the live callback then take it like the
built-in ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from functools import partial

import torch
from rich.console import Console
from rich.progress import Progress

from rlcast.core.backend import Backend, Compute, map_tensors, resolve_device
from rlcast.errors import RlcastError
from rlcast.io.checkpoints import Run
from rlcast.io.outputs import check_output
from rlcast.io.reader import RunReader
from rlcast.io.records import output_record
from rlcast.io.selections import check_selection
from rlcast.io.writer import write_model

CPU = torch.device("cpu")
ONE_AT_A_TIME = Backend(workers=1)  # predict's default: one tensor in memory at a time, whatever the core count
ONE_CPU = Compute(device="cpu", workers=1)  # write_prediction's default: the CPU, one tensor at a time


class Extrapolator:
    """Base class: parameters, window checks, module selection and the streaming loop.

    After `fit`: `run_` (the window), `reader_` (reading onto the fit's device), `last_` (last window step) and
    `targets_` (names the method predicts: the selection's tensors that some checkpoint changes), then whatever the
    subclass's `_fit` learns. A fitted estimator pickles (its reader as the run's paths), so Ray tasks can predict.
    """

    name = ""            # registry name (set by `register`)
    reference = ""       # where the method comes from: its paper ("NExt, arXiv 2604.11446"), or "rlcast"
    min_checkpoints = 2  # fewer window checkpoints is an error
    anchor = "base"      # where untouched tensors (and the predicted updates) start: "base" or "last"

    def __init__(self, selection: str = "all", progress: bool = False):
        self.selection = check_selection(selection)
        self.progress = progress

    def get_params(self) -> dict:
        """The `__init__` parameters and their values (sklearn's BaseEstimator.get_params, without nesting)."""
        return {p: getattr(self, p) for p in parameters(type(self))}

    def fit(self, run: Run, device: str | torch.device | None = None) -> "Extrapolator":
        """Fit on every checkpoint of `run` (already windowed to the cutoff, `run.window(cutoff)`).

        `device` (None: the CPU; "auto", "cpu", "cuda[:N]") is where the tensors are read and the per-tensor
        arithmetic runs, in `fit` and in `predict`.
        """
        n = len(run.checkpoints)
        if n < self.min_checkpoints:
            until = f"up to step {run.steps[-1]}" if n else "(empty)"
            raise RlcastError(f"{self.label()}: needs at least {self.min_checkpoints} checkpoints, the window {until} "
                              f"has {n}")
        self.run_ = run
        self.reader_ = RunReader(run, None if device is None else resolve_device(device))
        self.reader_.open(run.steps)  # a bad file of the window fails before the fit
        self.last_ = run.steps[-1]
        self.targets_ = self.reader_.selected(self.selection)
        self._fit()
        return self

    def predict(self, step: int, backend: Backend = ONE_AT_A_TIME) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream (name, predicted float32 weight at `step`, on the CPU) for every base tensor, in base order.

        The predicted tensors are computed one task per tensor on `backend` (`rlcast.core.backend.connect`; default
        one at a time in a worker thread), at most `backend.workers` at a time; the others (the anchor's) are read
        here. Bad targets are errors here, before the
        first tensor is computed.
        """
        if not hasattr(self, "run_"):
            raise RlcastError(f"{self.label()}: call fit(run) before predict(step)")
        if step < self.last_:
            raise RlcastError(f"{self.label()}: target step {step} is before the cutoff step {self.last_}")
        self._check(step)
        return self._stream(step, backend)

    def _stream(self, step: int, backend: Backend) -> Iterator[tuple[str, torch.Tensor]]:
        targets, names = set(self.targets_), self.reader_.names()
        computed = map_tensors(partial(_predicted, self, step), [n for n in names if n in targets], backend,
                               self.reader_.device)
        for name in names:
            yield name, next(computed) if name in targets else self._anchor(name, CPU)

    def summary(self) -> dict:
        """What the fit chose (for reports): module selection, number of predicted tensors, anchor, window."""
        return {"selection": self.selection, "tensors": len(self.targets_), "anchor": self.anchor,
                "window": list(self.run_.steps)}

    def label(self) -> str:
        """The registry name, else the class name (an unregistered user class)."""
        return self.name or type(self).__name__

    def _anchor(self, name: str, device: torch.device | None = None) -> torch.Tensor:
        """The anchor's float32 weight (on `device`, default the fit's)."""
        if self.anchor == "base":
            return self.reader_.base(name, device)
        return self.reader_.weight(self.last_, name, device)

    def _fit(self) -> None:
        """Method-specific fitting on self.run_ (override)."""

    def _check(self, step: int) -> None:
        """Raise RlcastError when `step` cannot be predicted (override; must not change the estimator)."""

    def _tensor(self, name: str, step: int) -> torch.Tensor:
        """The predicted float32 weight of one target tensor at `step`, on the fit's device (override).

        Runs in worker threads or Ray tasks, several tensors at once: it must not change the estimator.
        """
        raise NotImplementedError


def _predicted(estimator: Extrapolator, step: int, name: str) -> torch.Tensor:
    """One backend task of `predict`: the fitted estimator's tensor `name` at `step`, returned on the CPU."""
    return estimator._tensor(name, step).cpu()


def parameters(cls: type) -> list[str]:
    """The hyper-parameter names of an estimator class (extrapolator, forecaster): its `__init__` arguments."""
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


METHODS: dict[str, type[Extrapolator]] = {}


def register(name: str):
    """Class decorator: add an Extrapolator subclass to METHODS under `name` (and set its `name`)."""
    def add(cls: type[Extrapolator]) -> type[Extrapolator]:
        if not (isinstance(cls, type) and issubclass(cls, Extrapolator)):
            raise RlcastError(f"register({name!r}): {cls!r} is not an Extrapolator subclass")
        cls.name = name
        METHODS[name] = cls
        return cls
    return add


def method_class(spec: str | Extrapolator) -> type[Extrapolator]:
    """The class of a registered name or of an instance; an unknown name is a one-line error listing the known."""
    if isinstance(spec, Extrapolator):
        return type(spec)
    if spec not in METHODS:
        raise RlcastError(f"unknown method {spec!r}: choose from {', '.join(METHODS)}")
    return METHODS[spec]


def make_extrapolator(spec: str | Extrapolator, **params) -> Extrapolator:
    """An unfitted extrapolator: METHODS[spec](**params), or for an instance a fresh copy of it with `params` changed.

    Unknown method names and parameters, and bad parameter values, are one-line errors.
    """
    cls = method_class(spec)
    if isinstance(spec, Extrapolator):
        params = {**spec.get_params(), **params}
    accepted = parameters(cls)
    for key in params:
        if key not in accepted:
            raise RlcastError(f"method {cls.name or cls.__name__} has no parameter {key!r} "
                              f"(it takes {', '.join(sorted(accepted))})")
    return cls(**params)


def with_task(spec: str | Extrapolator, params: dict, task: str | None, task_args: dict | None, target_step: int,
              max_new_tokens: int | None = None) -> dict:
    """`params` plus the task context for a method that scores candidates on a task (NExt chooses its scale c on the
    train split, for `target_step`, at `max_new_tokens`: the run's completion budget) when none was given."""
    given = {**(spec.get_params() if isinstance(spec, Extrapolator) else {}), **params}
    accepted = parameters(method_class(spec))
    if task is None or "task" not in accepted or given.get("task") is not None:
        return params
    context = {"task": task, "task_args": task_args, "target_step": target_step}
    if "max_new_tokens" in accepted and given.get("max_new_tokens") is None:
        context["max_new_tokens"] = max_new_tokens
    return {**params, **context}


def write_prediction(run: Run, method: str | Extrapolator, until: int, target: int, out, params: dict | None = None,
                     task: str | None = None, task_args: dict | None = None, progress: bool = False,
                     compute: Compute = ONE_CPU, force: bool = False) -> Extrapolator:
    """Fit `method` on the checkpoints of `run` up to step `until`, write its weights for step `target` as the HF
    folder `out` and return the fitted extrapolator.

    A method that takes a task (NExt, to choose its scale c on the train split) gets `task`, `task_args`, the target
    and the run's completion budget unless `params` sets them. `compute`: where the fit and the predicted tensors are
    computed (default the CPU, one tensor at a time). The method and its parameters are checked before any fit, and
    so is `out` (`io.outputs.check_output`): never an input of the run, and an existing folder only when rlcast
    extrapolate wrote it, unless `force`.
    """
    label = method if isinstance(method, str) else method.label()
    record = output_record("extrapolate", {"run": str(run.root or run.base), "method": label, "until": until,
                                           "target": target, "params": params or {}})
    run.base_config()  # the prediction copies it: a base without one fails now, named
    budget = run.manifest.completion_budget if run.manifest else None
    ex = make_extrapolator(method, progress=progress,
                           **with_task(method, dict(params or {}), task, task_args, target, budget))
    check_output(out, "extrapolate", folder=True, run=run, force=force)
    with compute.open() as (device, backend):
        ex.fit(run.window(until), device=device)
        stream = ex.predict(target, backend)
        console = Console(stderr=True)
        with Progress(console=console, transient=True, disable=not (progress and console.is_terminal)) as bar:
            job = bar.add_task(f"{ex.label()}: writing step {target}", total=len(ex.reader_.names()))

            def counted():
                for item in stream:
                    yield item
                    bar.advance(job)

            write_model(run.base, out, counted(), metadata={
                "rlcast": f"{ex.label()} from step {ex.last_} to step {target}", "selection": ex.selection},
                record=record, force=force)
    return ex
