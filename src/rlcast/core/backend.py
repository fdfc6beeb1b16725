"""Where per-tensor work runs: on which device (CPU or CUDA) and in which processes (this one, or Ray tasks).

rlcast's heavy commands are maps over tensors: for every (checkpoint, tensor), read the tensor from the (shared)
filesystem, compute, and return something small (a spectrum) or one tensor (a rank-k weight). `map_tensors(fn, items,
backend)` runs such a map in threads of this process, or as one Ray task per item (as mergekit's Ray executor does),
each task reading its own tensors; either way the results come back in the order of `items`, so everything
downstream (caches, analysis.json, written models) is the same. At most `workers` items (Ray: 2 x workers) are in
flight, which bounds memory.

`fn` must be picklable for Ray (a module-level function, or a functools.partial of one); it is shipped once through
the object store, each item with its task. Ray is imported only when asked for (`pip install rlcast[ray]`).
Every item is computed with one torch thread on every backend (parallelism comes from running items side by side),
so the numbers do not depend on where they were computed.
`resolve_device` turns --device into a torch.device, checked before any output is written; the per-tensor functions
read their tensors straight onto it and return CPU results, so caching and writing never see the device. `Compute`
carries the four settings (device, backend, Ray address, workers) from the command line to every app as one value.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rlcast.errors import RlcastError

BACKENDS = ("local", "ray")
DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA when present, else the CPU), 'cpu', 'cuda' or 'cuda:N'; a missing CUDA device is a one-line error."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise RlcastError(f"--device {spec!r}: expected {DEVICES}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise RlcastError(f"--device {spec!r}: expected {DEVICES}")
    if not torch.cuda.is_available():
        raise RlcastError(f"--device {spec}: no CUDA device here (torch {torch.__version__} sees none); use --device "
                          "cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RlcastError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


@dataclass(frozen=True)
class Backend:
    """Where `map_tensors` runs its items: `local` (threads of this process) or `ray` (Ray tasks), `workers` at once."""
    kind: str = "local"
    workers: int | None = None  # local: None = torch's thread count when the map starts


LOCAL = Backend()


@dataclass(frozen=True)
class Compute:
    """Where a command's per-tensor work runs: --device, --backend, --ray-address and --workers as one value.

    Checked on construction (the device is resolved again by `open`, which also connects the backend)."""
    device: str = "auto"
    backend: str = "local"
    ray_address: str | None = None
    workers: int | None = None

    def __post_init__(self):
        resolve_device(self.device)
        _check(self.backend, self.ray_address, self.workers)

    @contextmanager
    def open(self) -> Iterator[tuple[torch.device, Backend]]:
        """(torch device, connected Backend) for the duration of a command."""
        device = resolve_device(self.device)
        with connect(self.backend, self.ray_address, self.workers) as backend:
            yield device, backend


def _check(kind: str, address: str | None, workers: int | None) -> None:
    if kind not in BACKENDS:
        raise RlcastError(f"--backend {kind!r}: expected {' or '.join(BACKENDS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise RlcastError(f"--workers must be >= 1 (got {workers})")
    if kind == "local" and address is not None:
        raise RlcastError("--ray-address needs --backend ray")


@contextmanager
def connect(kind: str = "local", address: str | None = None, workers: int | None = None) -> Iterator[Backend]:
    """Open a backend for the duration of a command; errors (unknown kind, unreachable cluster) come before any work.

    local: `workers` threads (default: torch's thread count). ray: joins the cluster at `address` ('auto' = the one
    running on this machine, 'host:port', 'ray://host:port'), else an already initialised Ray, else starts a local
    instance with `workers` CPUs (default: all), shut down again on exit; one CPU per task.
    """
    _check(kind, address, workers)
    if kind == "local":
        yield Backend("local", workers)
        return
    import ray  # heavy optional dependency (rlcast[ray]): imported only for --backend ray

    started = False
    if address is not None:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as err:
            raise RlcastError(f"--ray-address {address}: cannot join the Ray cluster "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        started = True
    elif not ray.is_initialized():
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        yield Backend("ray", max(1, int(ray.cluster_resources().get("CPU", 1))))
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """A quick TCP check of 'host:port' / 'ray://host:port' (ray.init itself retries for a minute before failing)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RlcastError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise RlcastError(f"--ray-address {address}: no Ray cluster reachable ({err.strerror or err})") from None


def map_tensors(fn: Callable, items: Iterable, backend: Backend = LOCAL, device: torch.device | None = None) -> Iterator:
    """fn(item) for every item, yielded in item order, `backend.workers` items in flight (2x on Ray, to hide latency).

    Every item is computed with one torch thread, whatever the backend: BLAS and LAPACK sum in another order with
    another thread count, so this is what makes local and Ray results bit-identical. Locally the cores are used by
    running `workers` items at once in threads (torch releases the GIL), one CUDA item at a time on a GPU; on Ray each
    task takes one CPU, and one CUDA device when `device` is CUDA.
    """
    cuda = device is not None and device.type == "cuda"
    if backend.kind == "local":
        workers = 1 if cuda else backend.workers or torch.get_num_threads()
        with _one_torch_thread(), ThreadPoolExecutor(workers, "rlcast-tensor", torch.set_num_threads, (1,)) as pool:
            yield from _in_order((pool.submit(fn, item) for item in items), workers, Future.result, Future.cancel)
        return
    import ray  # heavy optional dependency (rlcast[ray]): imported only for --backend ray

    task = ray.remote(_call).options(num_cpus=1, num_gpus=1 if cuda else 0, max_retries=0)
    fn_ref = ray.put(fn)
    yield from _in_order((task.remote(fn_ref, item) for item in items), 2 * backend.workers,
                         lambda ref: _ray_get(ray, ref), ray.cancel)


def _in_order(submitted: Iterator, window: int, get: Callable, cancel: Callable) -> Iterator:
    """The results of submitted work, in submission order, with at most `window` submitted and not yet yielded."""
    pending: deque = deque()
    try:
        for handle in submitted:
            pending.append(handle)
            if len(pending) >= window:
                yield get(pending.popleft())
        while pending:
            yield get(pending.popleft())
    finally:
        for handle in pending:  # the consumer stopped early (an error): drop the work still queued
            cancel(handle)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch (and MKL / OpenMP) at one thread here and, through the pool's initializer, in every pool thread: OpenMP
    keeps its thread count per calling thread, and a fresh thread would otherwise start at all cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _call(fn: Callable, item):
    """A Ray task: fn(item) with one torch thread (as every backend computes)."""
    torch.set_num_threads(1)
    return fn(item)


def _ray_get(ray, ref):
    """ray.get, with a task's RlcastError re-raised as itself (one line, not Ray's wrapped traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, RlcastError):
            raise err.cause from None
        raise
