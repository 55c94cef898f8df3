"""Reward functions: the registry, the one safe way to call them (`score`), and weighted sums.

A reward function is any callable `fn(completion: str, example: Example) -> float` or
`-> (float, {name: float})`, the dict holding components to log as metrics. The env never calls
one directly: it calls `score`, which turns every way a reward can fail into reward 0.0 and an
`error` string, so one bad verifier cannot crash a training run.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import numbers
import os
import pickle
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from textgym.example import Example
from textgym.registry import Registry, is_module_path, load_attribute

__all__ = [
    "RewardFn",
    "RewardResult",
    "register_reward",
    "get_extractor",
    "stripped",
    "list_rewards",
    "get_reward",
    "reward_name",
    "score",
    "score_many",
    "guarded_calls",
    "call_reward",
    "wants_ids",
    "combine",
]

RewardFn = Callable[[str, Example], Union[float, "tuple[float, dict[str, float]]"]]
Extractor = Callable[[str], Union[str, None]]

REWARDS: Registry[RewardFn] = Registry(
    "reward", " (or an installed package's `textgym.rewards` entry point, or a module path 'package.module:function')",
    group="textgym.rewards",
)
# How each registered reward reads the answer out of a completion, by the reward's name: what
# maj@k votes on and what the answer statistics count (`get_extractor`).
EXTRACTORS: dict[str, Extractor] = {}


def stripped(text: str) -> str | None:
    """The completion itself as the answer, stripped; None when blank (a reward without an extractor)."""
    return text.strip() or None


def register_reward(name: str, fn: RewardFn | None = None, *, extract: Extractor | str | None = None, overwrite: bool = False):
    """Register `fn` under `name`; without `fn`, return a decorator.

        @register_reward("shout", extract=first_line)
        def shout(completion, example):
            return float(completion.isupper())

    `extract(completion) -> str | None` says which answer the reward reads in a completion (None:
    no answer): `textgym eval`'s maj@k votes on it, and the answer statistics (the prior, answer
    diversity) count it. A name instead borrows a registered reward's extraction
    (`extract="numeric_match"`: the last number, in <answer> tags or \\boxed{} if any). Without one,
    the answer is the whole completion, stripped (`stripped`), so "The sum is 7." and "7" are
    different answers: give one for any reward that reads a part of the completion (the rewards
    `combine` and `from_trl` make have none until registered with one).

    Registering the same function again is a no-op (a new `extract` replaces the old); a different
    one under a taken name raises ValueError unless `overwrite=True`.
    """
    extractor = _as_extractor(extract, name)

    def add(entry: RewardFn) -> RewardFn:
        old = REWARDS.get(name) if REWARDS.registered(name) else None
        REWARDS.register(name, entry, overwrite=overwrite)
        if extractor is not None:
            EXTRACTORS[name] = extractor
        elif old is not None and old is not entry:  # the old function's extraction is not this one's
            EXTRACTORS.pop(name, None)
        return entry

    return add if fn is None else add(fn)


def _as_extractor(extract: Extractor | str | None, name: str) -> Extractor | None:
    if extract is None or callable(extract):
        return extract
    if isinstance(extract, str) and extract in EXTRACTORS:
        return EXTRACTORS[extract]
    known = ", ".join(sorted(EXTRACTORS))
    raise ValueError(f"extract= of reward {name!r} must be a function completion -> answer or the name of a reward "
                     f"that has one ({known}); got {extract!r}")


def get_extractor(reward: str | RewardFn) -> Extractor:
    """How `reward` (a name or a function) reads the answer in a completion: the extraction it was
    registered with, else `stripped` (the whole completion)."""
    if isinstance(reward, str):
        fn = get_reward(reward)  # an unknown name is an error, not "no extractor"
        return EXTRACTORS[reward] if reward in EXTRACTORS else get_extractor(fn)
    return next((EXTRACTORS[n] for n in REWARDS.names_of(reward) if n in EXTRACTORS), stripped)


def list_rewards() -> list[str]:
    """The registered rewards' names, and those installed packages declare (`textgym.rewards` entry points)."""
    return REWARDS.names()


def get_reward(name_or_fn: str | RewardFn) -> RewardFn:
    """The reward `name_or_fn` names, or the callable itself.

    A name is, in this order: a registered reward; an installed package's `textgym.rewards` entry
    point (loaded now); a module path 'package.module:function' (the module imported, the function
    taken, as `gym.make("module:Env-v0")` does). An unknown name is a ValueError listing the known
    ones; a module that is missing or fails to import, or has no such function, an ImportError.
    """
    if callable(name_or_fn):
        return name_or_fn
    if isinstance(name_or_fn, str) and name_or_fn not in REWARDS and is_module_path(name_or_fn):
        fn = load_attribute(name_or_fn, f"reward {name_or_fn!r}")
        if not callable(fn):
            raise TypeError(f"reward {name_or_fn!r} is {type(fn).__name__}, not a function (completion, example) -> float")
        return fn
    return REWARDS.get(name_or_fn)


def reward_name(fn: Any) -> str:
    """How error messages name a reward: its registered name, else its qualified name."""
    return REWARDS.name_of(fn) or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


@dataclass(frozen=True)
class RewardResult:
    reward: float
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _finite_number(value: Any, what: str) -> float:
    # bool is an int to Python, but a verifier returning True/False is almost always a bug in
    # waiting (a component dict keyed wrongly, a comparison returned by mistake): refuse it.
    if isinstance(value, (bool,)) or type(value).__name__ == "bool_":
        raise TypeError(f"{what} is a bool ({value!r}); return 1.0 or 0.0")
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what} is {type(value).__name__} ({value!r:.80}), not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} is {value}, not a finite number")
    return value


def as_result(value: Any) -> tuple[float, dict[str, float]]:
    """Validate a reward function's return value: (reward, components). Raises on anything else."""
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[1], Mapping):
            raise TypeError("a tuple return must be (reward, {component: value})")
        reward = _finite_number(value[0], "reward")
        components = {str(k): _finite_number(v, f"component {k!r}") for k, v in value[1].items()}
        return reward, components
    return _finite_number(value, "reward"), {}


_WANTS_IDS: dict[Any, bool] = {}


def wants_ids(fn: Any) -> bool:
    """Whether a reward function takes the sampled token ids: a `completion_ids` keyword."""
    try:
        return _WANTS_IDS[fn]
    except (KeyError, TypeError):
        try:
            wants = "completion_ids" in inspect.signature(fn).parameters
        except (TypeError, ValueError):  # builtins and some callables have no signature
            wants = False
        try:
            _WANTS_IDS[fn] = wants
        except TypeError:  # unhashable callable
            pass
        return wants


def call_reward(fn: RewardFn, completion: str, example: Example, ids: Sequence[int] | None = None) -> Any:
    """`fn(completion, example)`, plus `completion_ids=ids` (the tokens the policy sampled, end token
    included) when `fn` takes them and the caller has them. Raises what `fn` raises."""
    if ids is not None and wants_ids(fn):
        return fn(completion, example, completion_ids=list(ids))
    return fn(completion, example)


def _failed(error: str) -> RewardResult:
    return RewardResult(0.0, {}, error)


def _call(fn: RewardFn, completion: str, example: Example, ids: Sequence[int] | None = None) -> RewardResult:
    try:
        value = call_reward(fn, completion, example, ids)
    except Exception as e:  # the point of score(): any failure of user code becomes a 0 reward
        return _failed(f"reward {reward_name(fn)!r} raised {type(e).__name__}: {e}")
    try:
        reward, components = as_result(value)
    except (TypeError, ValueError) as e:
        return _failed(f"reward {reward_name(fn)!r} returned a bad value: {e}")
    return RewardResult(reward, components, None)


Item = tuple  # the arguments of one call: (completion, example) or (completion, example, sampled ids) for a reward
Runner = Callable[..., Any]  # runner(target, *item) -> a picklable result; it catches the target's exceptions itself
_inside = threading.local()  # .worker is True in a verifier thread


class _VerifierThread:
    """One daemon thread that runs the guarded calls of `guarded_calls(..., timeout=...)`.

    Starting a thread per call cost more than the verifiers themselves, and so did handing calls
    over one at a time (about half of a vector env step at 64 slots): a batch of calls (every
    episode that finished on a step) is one hand-off, and results come back one by one so each
    call keeps its own timeout. A call that times out leaves its thread behind (Python cannot kill
    a thread): the thread is told to exit once that call returns, and the rest of the batch goes to
    a fresh thread.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child inherits this object but not the thread
        self.abandoned = False
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True, name="textgym-reward").start()

    def _run(self) -> None:
        _inside.worker = True  # guarded calls made from a guarded call run inline (see guarded_calls)
        while (job := self.jobs.get()) is not None:
            runner, target, items, starts, results, ready = job
            for item in items:
                if self.abandoned:  # the caller gave up on this batch: leave the rest to the next worker
                    return
                starts.append(time.monotonic())
                results.append(runner(target, *item))
            with ready:
                ready.notify()

    def run(self, runner: Runner, target: Any, items: list[Item], timeout: float | None) -> list[Any]:
        """The results of the leading calls that finished in time (all of them, or up to the one that
        timed out, which is then missing and this thread abandoned)."""
        starts: list[float] = []  # when the worker began each call: each call's clock starts there
        results: list[Any] = []
        ready = threading.Condition()
        with ready:
            self.jobs.put((runner, target, items, starts, results, ready))
            while len(results) < len(items):
                k = len(results)
                began = starts[k] if len(starts) > k else time.monotonic()
                left = began + timeout - time.monotonic()
                if left <= 0 and len(results) == k:
                    self.abandoned = True
                    self.jobs.put(None)
                    return results[:k]
                ready.wait(max(left, 0.0))  # woken when the batch is done, or at the running call's deadline
        return results


_FORK = "fork" in multiprocessing.get_all_start_methods()


def _process_main(conn, runner: Runner, target: Any) -> None:
    global _worker_lock, _thread_worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is not ours
    # Forked while the parent held the lock and owned the workers: none of that is ours.
    _worker_lock, _thread_worker = threading.Lock(), None
    _process_workers.clear()
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or exited
            return
        for item in items:
            conn.send(runner(target, *item))


class _VerifierProcess:
    """A worker process that runs one target's calls for `guarded_calls(..., isolation="process")`.

    Unlike a thread it can be stopped: on a timeout it is killed (SIGKILL), so a verifier stuck in
    a loop stops burning CPU and memory, and a verifier that crashes the interpreter (a segfault in
    an extension, `os._exit`) costs one episode's reward instead of the run; the rest of the batch
    goes to a fresh process. Where `fork` exists the process is forked with the target already in
    its memory, so closures and lambdas work; elsewhere (`spawn`) the target must pickle (be
    defined at module level; `check_isolatable` says so early). A batch of calls is one message
    down the pipe; results come back one by one.
    """

    def __init__(self, runner: Runner, target: Any, what: str) -> None:
        self.pid = os.getpid()
        self.runner, self.target, self.what = runner, target, what
        ctx = multiprocessing.get_context("fork" if _FORK else "spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_process_main, args=(child, runner, target), daemon=True, name="textgym-reward")
        self.process.start()
        child.close()

    def run(self, items: list[Item], timeout: float | None, fail: Callable[[str], Any]) -> tuple[list[Any], bool]:
        """(results of the leading calls that finished, whether the next one timed out).

        A call that crashed the process gets its error result and ends the batch here; the caller
        sends the rest to a fresh process.
        """
        try:
            self.conn.send(items)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            error = (f"the arguments of {self.what} cannot be sent to its worker process ({e}); keep example "
                     "metadata (and a multi-turn task's state) picklable or use reward_isolation='thread'")  # fmt: skip
            return [fail(error) for _ in items], False
        results: list[Any] = []
        for _ in items:
            if not self.conn.poll(timeout):
                self.close()
                return results, True
            try:
                results.append(self.conn.recv())
            except (EOFError, OSError):
                self.process.join(1.0)
                code = self.process.exitcode
                self.close()
                results.append(fail(f"{self.what} killed its worker process (exit code {code})"))
                return results, False
        return results, False

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.process.is_alive()

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()


def check_isolatable(fn: Any, what: str | None = None) -> None:
    """Raise a ValueError that says what to do if `fn` (a reward, or what `what` names) cannot run in a
    worker process (only where processes are spawned rather than forked, e.g. on Windows, must it pickle)."""
    fn = get_reward(fn) if what is None else fn
    if _FORK:
        return
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise ValueError(
            f"{what or f'reward {reward_name(fn)!r}'} cannot run in a worker process (reward_isolation='process'): "
            f"it does not pickle ({e}). Define it at module level, or keep reward_isolation='thread'."
        ) from None


ISOLATIONS = ("thread", "process")
MAX_REWARD_PROCESSES = 4  # worker processes kept at once (one per reward function or task; the oldest goes)
_thread_worker: _VerifierThread | None = None
_process_workers: dict[tuple[int, Runner], _VerifierProcess] = {}
_worker_lock = threading.Lock()


def _process_worker(runner: Runner, target: Any, what: str) -> _VerifierProcess:
    key = (id(target), runner)
    worker = _process_workers.get(key)
    if worker is not None and worker.target is target and worker.alive():
        return worker
    if worker is not None:
        _process_workers.pop(key)
        if worker.pid == os.getpid():
            worker.close()
    while len(_process_workers) >= MAX_REWARD_PROCESSES:
        _process_workers.pop(next(iter(_process_workers))).close()
    worker = _process_workers[key] = _VerifierProcess(runner, target, what)
    return worker


def score(
    fn: str | RewardFn, completion: str, example: Example, timeout: float | None = None, isolation: str = "thread"
) -> RewardResult:
    """Call a reward safely; never raises. The one-call case of `score_many` (see there)."""
    return score_many(fn, [(completion, example)], timeout, isolation)[0]


def score_many(
    fn: str | RewardFn, items: list[Item], timeout: float | None = None, isolation: str = "thread"
) -> list[RewardResult]:
    """Score (completion, example) pairs with one reward function, safely: never raises.

    An item may carry the sampled token ids as a third element; a reward function with a
    `completion_ids` keyword then gets them (see `call_reward`).

    Exceptions, a non-number / bool / NaN / inf / None result, or running past `timeout` seconds
    (per call) give reward 0.0 and an `error` message; the other calls are unaffected.

    `isolation="thread"` (default): with a timeout the calls run in a daemon worker thread (one,
    reused; the batch is one hand-off); on a timeout we stop waiting and move on, but Python cannot
    kill the thread: it finishes in the background and a fresh worker takes the remaining calls.
    Without a timeout the calls run inline. `isolation="process"`: the calls run in a worker process
    (one per reward function, reused), which is killed on timeout and replaced if the reward crashes
    it; use it for verifiers that can hang or crash (symbolic math, running generated code). Costs a
    pipe round trip per batch plus one per result.
    """
    try:
        fn = get_reward(fn)
    except ValueError as e:
        return [_failed(str(e)) for _ in items]
    return guarded_calls(_call, fn, items, timeout, isolation, what=f"reward {reward_name(fn)!r}", fail=_failed)


def guarded_calls(
    runner: Runner, target: Any, items: list[Item], timeout: float | None, isolation: str, *, what: str,
    fail: Callable[[str], Any],
) -> list[Any]:
    """`runner(target, *item)` for every item, under `timeout` (seconds per call) and `isolation`:
    the one guard around code that reads a policy's text (reward functions here, a multi-turn
    task's `reply` in the transition). Never raises.

    `runner` is a module-level function that catches what `target` raises and returns a picklable
    result; a call that times out, or that kills its worker process, gets `fail(message)` instead,
    the message naming `what`. Threads and processes: see `score_many`. A guarded call made from
    inside a guarded call (a task's reply that scores with a reward) runs inline, under the outer
    call's timeout.
    """
    if isolation not in ISOLATIONS:
        return [fail(f"unknown isolation {isolation!r}; use one of {ISOLATIONS}") for _ in items]
    if (timeout is None and isolation == "thread") or getattr(_inside, "worker", False):
        return [runner(target, *item) for item in items]
    global _thread_worker
    results: list[Any] = []
    with _worker_lock:  # one batch at a time, so `timeout` never counts time spent in a queue
        while len(results) < len(items):
            rest = items[len(results) :]
            if isolation == "process":
                done, expired = _process_worker(runner, target, what).run(rest, timeout, fail)
            else:
                if _thread_worker is None or _thread_worker.pid != os.getpid():  # a forked child has no thread
                    _thread_worker = _VerifierThread()
                done = _thread_worker.run(runner, target, rest, timeout)
                expired = len(done) < len(rest)
                if expired:
                    _thread_worker = None
            results += done
            if expired:
                results.append(fail(f"{what} timed out after {timeout:g} s" if timeout else f"{what} timed out"))
    return results


def combine(parts: Mapping[str, RewardFn | str], weights: Mapping[str, float] | None = None) -> RewardFn:
    """A reward that is the weighted sum of named parts; returns (total, components).

        reward = combine({"answer": "numeric_match", "format": "r1_format"},
                         weights={"answer": 1.0, "format": 0.1})

    Every part appears in the components under its name, zero-weight parts included, so each can
    be logged as a metric. A part's own components appear as "part/component". Weights default
    to 1.0.
    """
    fns = {name: get_reward(f) for name, f in parts.items()}
    if not fns:
        raise ValueError("combine() needs at least one part")
    weights = dict(weights or {})
    unknown = set(weights) - set(fns)
    if unknown:
        raise ValueError(f"weights for unknown parts {sorted(unknown)}; parts are {sorted(fns)}")
    w = {name: float(weights.get(name, 1.0)) for name in fns}

    def combined(completion: str, example: Example, completion_ids: Sequence[int] | None = None) -> tuple[float, dict[str, float]]:
        total, components = 0.0, {}
        for name, f in fns.items():
            value, sub = as_result(call_reward(f, completion, example, completion_ids))
            components[name] = value
            components.update({f"{name}/{k}": v for k, v in sub.items()})
            total += w[name] * value
        return total, components

    combined.__name__ = combined.__qualname__ = "combine(" + ", ".join(fns) + ")"
    return combined
