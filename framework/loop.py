"""The one train loop: state, step, batches; everything else is a hook.

  loop = Loop(step_fn, state, batches, total_steps=1000)
  loop.add_hook(log_metrics, every=10)
  loop.add_hook(evaluate, every=100)
  result = loop.run()

`step_fn(state, batch) -> (state, device metrics)` is any jitted step (the
framework's `train_step`, a `scan_steps` chunk of it, or a population step).
After each call the loop advances its step counter by `steps_per_call` and
calls every hook whose period was crossed, in the order added, with a
`StepInfo`. Logging, progress, evaluation, checkpoints, the NaN guard, early
stop and study-specific measurements (margins, Fourier power, cosines) are all
hooks (Levanter's `add_hook(fn, every=n)`); `framework.hooks` has the common
ones. Hooks registered with `at_end=True` run once more after the last step
(unless they already ran at that step), with `info.final` set.

Device metrics are fetched lazily: only a hook that reads `info.metrics`
makes the host wait for the step, so hooks that fire rarely cost nothing on
the other steps. A hook may call `info.loop.request_stop(reason)`; the loop
stops before the next step runs. SIGTERM/SIGINT request a stop too
(`result.preempted`), after which hooks run as at the end.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Any, Callable, Iterator, Optional

import jax


@dataclasses.dataclass
class StepInfo:
  """What a hook sees: the step count after this call, the state, the metrics."""
  step: int
  state: Any
  device_metrics: Any
  loop: "Loop"
  final: bool = False
  _host: Optional[dict] = None

  @property
  def metrics(self) -> dict[str, float]:
    """This step's metrics on the host (the first access waits for the step)."""
    if self._host is None:
      fetched = jax.device_get(self.device_metrics)
      self._host = {k: (float(v) if getattr(v, "ndim", 0) == 0 else v)
                    for k, v in fetched.items()}
    return self._host


@dataclasses.dataclass
class Hook:
  fn: Callable[[StepInfo], Any]
  every: int
  at_end: bool
  name: str
  last_step: int = -1


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  metrics: dict[str, float]
  stop_reason: Optional[str]
  preempted: bool


class _PreemptionFlag:
  """Sets itself on SIGTERM/SIGINT while installed (main thread only)."""

  def __init__(self):
    self.event = threading.Event()
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


class Loop:
  """Runs `step_fn` from `state.step` (or `start_step`) to `total_steps`."""

  def __init__(self, step_fn: Callable[[Any, Any], tuple[Any, Any]], state: Any,
               batches: Iterator[Any], *, total_steps: int, start_step: int = 0,
               steps_per_call: int = 1,
               put_batch: Callable[[Any], Any] = lambda b: b,
               handle_signals: bool = True):
    if steps_per_call < 1:
      raise ValueError(f"steps_per_call={steps_per_call} must be >= 1")
    self.step_fn = step_fn
    self.state = state
    self.batches = batches
    self.total_steps = int(total_steps)
    self.step = int(start_step)
    self.steps_per_call = int(steps_per_call)
    self.put_batch = put_batch
    self.handle_signals = handle_signals
    self.hooks: list[Hook] = []
    self.stop_reason: Optional[str] = None
    self.preempted = False
    self._last_info: Optional[StepInfo] = None

  def add_hook(self, fn: Callable[[StepInfo], Any], every: int = 1, *, at_end: bool = False,
               name: str | None = None) -> Hook:
    """Calls `fn(info)` after every `every` steps (and at the end if `at_end`)."""
    if every < 1:
      raise ValueError(f"hook {name or fn}: every={every} must be >= 1")
    hook = Hook(fn, int(every), at_end, name or getattr(fn, "__name__", type(fn).__name__))
    self.hooks.append(hook)
    return hook

  def request_stop(self, reason: str) -> None:
    if self.stop_reason is None:
      self.stop_reason = reason
      logging.info("loop: stop requested at step %d: %s", self.step, reason)

  def _fire(self, info: StepInfo, previous: int) -> None:
    for hook in self.hooks:
      if info.step // hook.every > previous // hook.every:
        hook.last_step = info.step
        hook.fn(info)

  def _fire_end(self, info: StepInfo) -> None:
    info.final = True
    for hook in self.hooks:
      if hook.at_end and hook.last_step != info.step:
        hook.last_step = info.step
        hook.fn(info)

  def run(self) -> LoopResult:
    flag = _PreemptionFlag() if self.handle_signals else None
    if flag is not None:
      flag.__enter__()
    try:
      while self.step < self.total_steps and self.stop_reason is None:
        batch = self.put_batch(next(self.batches))
        self.state, device_metrics = self.step_fn(self.state, batch)
        previous, self.step = self.step, self.step + self.steps_per_call
        info = StepInfo(self.step, self.state, device_metrics, self)
        self._last_info = info
        self._fire(info, previous)
        if flag is not None and flag.event.is_set():
          logging.warning("loop: preemption signal at step %d", self.step)
          self.preempted = True
          self.request_stop("preempted")
      if self._last_info is None or self._last_info.step != self.step:
        self._last_info = StepInfo(self.step, self.state, {}, self)
      self._fire_end(self._last_info)
    finally:
      if flag is not None:
        flag.__exit__(None, None, None)
    metrics = self._last_info.metrics if self._last_info.device_metrics else {}
    return LoopResult(self.state, self.step, metrics, self.stop_reason, self.preempted)
