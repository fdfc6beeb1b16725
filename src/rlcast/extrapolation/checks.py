"""`check_extrapolator(cls)`: the estimator contract every extrapolator keeps, run on a small planted run
(scikit-learn's `check_estimator` is the model). Run it on your own subclass before registering it:

    from rlcast.extrapolation import check_extrapolator
    check_extrapolator(MyMethod)      # raises RlcastError naming the class and the broken rule; returns the checks run

The rules (module docstring of `rlcast.extrapolation.base`): constructible with no arguments; every `__init__` parameter
stored unchanged under its own name, so `get_params()` reads back exactly what was given; a `reference` (the paper)
as a class attribute; nothing learned before `fit`; `predict` before `fit` a one-line error; `fit(run)` returns the
estimator, sets only attributes ending in `_` (or private `_x`) and leaves the parameters alone; `predict(step)` streams
every base tensor in base order as a finite float32 CPU tensor of the base's shape, is pure (twice: the same tensors,
the estimator unchanged) and deterministic (a second fit predicts the same), and survives pickling (Ray tasks); bad
input (a window too short, a target before the cutoff, an unknown parameter) is a one-line RlcastError.
`check_params` holds the parameter rules, which `rlcast.forecasting.check_forecaster` shares.
"""

from __future__ import annotations

import inspect
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from rlcast.errors import RlcastError
from rlcast.extrapolation.base import Extrapolator, make_extrapolator, parameters
from rlcast.io.checkpoints import Run, load_run
from rlcast.io.manifest import Entry, Manifest
from rlcast.io.reader import RunReader
from rlcast.io.synthetic import planted_run

STEPS = (10, 20, 30, 40, 50, 60)  # the planted run's checkpoints; its accuracy rises linearly with the step


def fail(cls: type, rule: str, detail: str) -> None:
    """Raise the one-line error of a broken rule, naming the class and the rule."""
    name = getattr(cls, "name", "") or cls.__name__
    raise RlcastError(f"{name} ({cls.__module__}.{cls.__qualname__}): {rule}: {' '.join(str(detail).split())}")


def expect_error(cls: type, rule: str, call: Callable[[], object]) -> None:
    """`call()` must raise a one-line RlcastError (bad input is refused in one line, never a traceback)."""
    try:
        call()
    except RlcastError as err:
        if "\n" in str(err) or not str(err):
            fail(cls, rule, f"the error is not one line: {str(err)!r}")
        return
    except Exception as err:  # noqa: BLE001 - any other exception is the broken rule being reported
        fail(cls, rule, f"raised {type(err).__name__} ({err}) instead of a one-line RlcastError")
    fail(cls, rule, "no error")


def state(estimator) -> dict:
    """The estimator's attributes as (name -> object identity): what `predict` must leave as it is."""
    return {key: id(value) for key, value in vars(estimator).items()}


def check_params(cls: type, base: type, make: Callable) -> object:
    """The parameter rules shared by extrapolators and forecasters; returns a default instance.

    `base`: the class `cls` must derive from; `make(spec, **params)`: the registry's factory (an unfitted copy of an
    instance, one-line errors for unknown parameters)."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise RlcastError(f"{cls!r} is not a subclass of {base.__module__}.{base.__name__}")
    if not isinstance(getattr(cls, "reference", None), str):
        fail(cls, "reference", "the class needs a `reference` string attribute (the paper, or 'rlcast')")
    signature = inspect.signature(cls.__init__)
    defaults = {}
    for name in parameters(cls):
        param = signature.parameters[name]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            fail(cls, "parameters", f"__init__ takes *{name}: every hyper-parameter must be named (get_params)")
        if param.default is param.empty:
            fail(cls, "parameters", f"__init__ parameter {name!r} has no default (the class must construct with "
                                    f"no arguments)")
        defaults[name] = param.default
    try:
        estimator = cls()
    except Exception as err:  # noqa: BLE001
        fail(cls, "construction", f"{cls.__name__}() raised {type(err).__name__}: {err}")
    got = estimator.get_params()
    if list(got) != list(defaults):
        fail(cls, "get_params", f"returns {sorted(got)}, __init__ takes {sorted(defaults)}")
    changed = [k for k, v in defaults.items() if not _same(got[k], v)]
    if changed:
        fail(cls, "parameters stored unchanged", f"{changed[0]}={got[changed[0]]!r} after __init__ was given "
                                                 f"{defaults[changed[0]]!r}")
    learned = sorted(k for k in vars(estimator) if k.endswith("_") and not k.startswith("__"))
    if learned:
        fail(cls, "nothing learned before fit", f"__init__ sets {learned[0]}")
    copy = make(estimator)
    if copy is estimator or type(copy) is not cls or not _same(copy.get_params(), got):
        fail(cls, "unfitted copy", "the factory did not give a fresh estimator with the same parameters")
    expect_error(cls, "an unknown parameter", lambda: make(estimator, no_such_parameter=1))
    return estimator


def _same(a, b) -> bool:
    """Equal values (a float nan equals itself)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def check_fit(cls, estimator, data, what: str) -> None:
    """`estimator.fit(data)` returns the estimator, sets only learned state (names ending in _) and leaves the
    parameters as given: scikit-learn's rules, shared by extrapolators and forecasters."""
    given, before = estimator.get_params(), set(vars(estimator))
    if estimator.fit(data) is not estimator:
        fail(cls, "fit returns self", f"fit({what}) returned something else")
    added = sorted(k for k in set(vars(estimator)) - before if not (k.endswith("_") or k.startswith("_")))
    if added:
        fail(cls, "learned state ends in _", f"fit set {added[0]}")
    if not _same(estimator.get_params(), given):
        fail(cls, "fit leaves the parameters alone", f"get_params() changed from {given} to "
                                                     f"{estimator.get_params()}")


def planted(folder: str | Path) -> Run:
    """A small planted run in `folder`: a tiny Llama base, checkpoints at STEPS moving every tensor along a fixed
    rank-1 direction linearly in the step, and a run.json whose held-out accuracy rises linearly (0.2 + 0.004 t)."""
    root = planted_run(Path(folder) / "run", steps=list(STEPS), hidden=32, layers=1)
    Manifest(format=1, base="base", base_accuracy=0.2, checkpoints=[
        Entry(s, path=f"checkpoint-{s}", accuracy=0.2 + 0.004 * s) for s in STEPS]).write(root / "run.json")
    return load_run(root)


def check_extrapolator(cls: type, run: Run | None = None, target: int | None = None,
                       params: dict | None = None) -> list[str]:
    """Run the estimator contract (module docstring) on the Extrapolator subclass `cls`: the parameter rules on its
    defaults, the fits with `params` on top of them (e.g. fewer training epochs), on `run` (default: a small planted
    run in a temporary folder) predicting `target` (default: 20 steps past its last checkpoint). Raises RlcastError
    naming the class and the first broken rule; returns the rules checked."""
    if run is None:
        with tempfile.TemporaryDirectory(prefix="rlcast-check-") as folder:
            return check_extrapolator(cls, planted(folder), target, params)
    check_params(cls, Extrapolator, make_extrapolator)
    estimator = make_extrapolator(cls(), **(params or {}))
    target = run.steps[-1] + 20 if target is None else target
    expect_error(cls, "predict before fit", lambda: estimator.predict(target))
    check_fit(cls, estimator, run, "run")
    kept = state(estimator)
    first = _prediction(cls, estimator, run, target)
    if state(estimator) != kept:
        fail(cls, "predict is pure", "predict changed the estimator's attributes")
    _compare(cls, "predict is deterministic", first, _prediction(cls, estimator, run, target))
    _compare(cls, "a second fit predicts the same", first,
             _prediction(cls, make_extrapolator(estimator).fit(run), run, target))
    _compare(cls, "a fitted estimator pickles", first, _prediction(cls, pickle.loads(pickle.dumps(estimator)), run,
                                                                  target))
    expect_error(cls, "a target before the cutoff", lambda: estimator.predict(run.steps[-1] - 1))
    expect_error(cls, "a window without checkpoints", lambda: make_extrapolator(estimator).fit(run.window(0)))
    return ["parameters", "reference", "predict before fit", "fit returns self", "learned state ends in _",
            "predict streams every base tensor", "predict is pure", "predict is deterministic",
            "a second fit predicts the same", "a fitted estimator pickles", "bad input is one line"]


def _prediction(cls: type, estimator: Extrapolator, run: Run, target: int) -> dict[str, torch.Tensor]:
    """The streamed prediction, checked: every base tensor in base order, float32, on the CPU, the base's shape,
    finite."""
    reader = RunReader(run)
    out = {}
    for name, tensor in estimator.predict(target):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32 or tensor.device.type != "cpu":
            fail(cls, "predict streams float32 CPU tensors", f"{name}: {getattr(tensor, 'dtype', type(tensor))} on "
                                                             f"{getattr(tensor, 'device', '?')}")
        if tuple(tensor.shape) != tuple(reader.shape(name)):
            fail(cls, "predict keeps the base's shapes", f"{name}: {tuple(tensor.shape)} vs {reader.shape(name)}")
        if not torch.isfinite(tensor).all():
            fail(cls, "predict is finite", f"{name} has NaN or Inf")
        out[name] = tensor
    if list(out) != list(reader.names()):
        fail(cls, "predict streams every base tensor in base order", f"got {len(out)} of {len(reader.names())}")
    return out


def _compare(cls: type, rule: str, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    differs = next((name for name in a if not torch.equal(a[name], b[name])), None)
    if differs is not None:
        fail(cls, rule, f"tensor {differs} differs")
