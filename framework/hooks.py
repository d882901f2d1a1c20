"""Common loop hooks: metrics logging, progress, evaluation, checkpoints, NaN guard,
early stop. Each is a callable `hook(info: loop.StepInfo)`; add them with
`loop.add_hook(hook, every=n)`.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from framework import metrics as metrics_lib
from framework import progress as progress_lib
from models import contract


class NonFiniteLossError(FloatingPointError):
  """Raised under nan_policy='stop' when a step produced a non-finite loss/grad."""


class LogMetrics:
  """Writes train/* metrics and perf/* rates every time it fires.

  Throughput counts what the step itself reports: the sum of its "tokens"
  (or "count") metric over the steps since the last write, accumulated on
  the device so that steps between writes never wait for the host.
  """

  def __init__(self, writer: metrics_lib.MetricWriter, *, flops_per_token: float = 0.0,
               peak_flops_total: float = 0.0, progress: progress_lib.Progress | None = None,
               prefix: str = "train/", start_step: int = 0):
    self.writer = writer
    self.flops_per_token = flops_per_token
    self.peak_flops_total = peak_flops_total
    self.progress = progress
    self.prefix = prefix
    self._count = None
    self._t0 = time.perf_counter()
    self._last_step = start_step

  def accumulate(self, info) -> None:
    """Every-step hook: adds the step's count on the device (no host sync)."""
    count = _count_of(info.device_metrics)
    if count is not None:
      count = jnp.where(jnp.isfinite(count), count, 0.0)  # a NaN batch trains nothing
      self._count = count if self._count is None else self._count + count

  def __call__(self, info) -> None:
    if not info.device_metrics:
      return
    host = info.metrics
    elapsed = time.perf_counter() - self._t0
    steps = info.step - self._last_step
    record = {f"{self.prefix}{k}": v for k, v in host.items() if isinstance(v, float)}
    if hasattr(info.state, "params"):
      record[f"{self.prefix}param_norm"] = float(_global_norm(info.state.params))
    record["perf/step_time_s"] = elapsed / max(steps, 1)
    extra = {}
    if self._count is not None:
      tokens = float(jax.device_get(self._count))
      rate = tokens / elapsed if elapsed > 0 else 0.0
      record["perf/tokens_per_s"] = rate
      extra["tok_s"] = round(rate)
      if self.flops_per_token and self.peak_flops_total:
        record["perf/mfu"] = self.flops_per_token * rate / self.peak_flops_total
        extra["mfu"] = record["perf/mfu"]
    self.writer.write(info.step, record)
    if self.progress is not None:
      self.progress.count = info.step
      self.progress.update(0, loss=host.get("loss"), **extra)
    self._count, self._t0, self._last_step = None, time.perf_counter(), info.step


_global_norm = jax.jit(optax.global_norm)


def _count_of(device_metrics) -> Any:
  for key in contract.COUNT_KEYS:
    if key in device_metrics:
      return device_metrics[key]
  return None


class NanGuard:
  """Acts on the step's `nonfinite` metric (the step already kept the old state).

  policy "stop": checked every step, raising before the next step runs.
  policy "skip": skipped steps are counted on the device and reported in a
  warning when `report` fires (at log time). With `max_consecutive` > 0 the
  run of consecutive skips is checked every step, one step behind (the flag
  of step k is read once step k+1 is queued, so no step waits for the host),
  and reaching it raises.
  """

  def __init__(self, policy: str, max_consecutive: int = 0):
    if policy not in ("skip", "stop"):
      raise ValueError(f"nan_policy={policy!r} must be 'skip' or 'stop'")
    self.policy = policy
    self.max_consecutive = int(max_consecutive)
    self._skipped = None
    self._run = None          # device: consecutive skipped steps up to the last step
    self._run_step = 0
    self.total_skipped = 0

  def _check_run(self) -> None:
    if self._run is None:
      return
    run = int(jax.device_get(self._run))
    if run >= self.max_consecutive:
      raise NonFiniteLossError(
          f"{run} steps in a row up to step {self._run_step} had a non-finite loss, "
          f"gradient or update and were skipped (trainer.max_consecutive_skips="
          f"{self.max_consecutive}); stopping")

  def __call__(self, info) -> None:
    flag = info.device_metrics.get("nonfinite") if info.device_metrics else None
    if flag is None:
      return
    if self.policy == "stop":
      host = info.metrics
      if host["nonfinite"] > 0:
        raise NonFiniteLossError(
            f"step {info.step}: non-finite loss={host.get('loss')}, grad_norm="
            f"{host.get('grad_norm')} or update; the update was skipped (nan_policy='stop')")
      return
    self._skipped = flag if self._skipped is None else self._skipped + flag
    if self.max_consecutive > 0:
      self._check_run()
      self._run = flag if self._run is None else flag * (self._run + 1.0)
      self._run_step = info.step

  def report(self, info) -> None:
    if self.policy == "skip" and self.max_consecutive > 0 and info.final:
      self._check_run()
    if self._skipped is None:
      return
    skipped = int(jax.device_get(self._skipped))
    self._skipped = None
    if skipped:
      self.total_skipped += skipped
      logging.warning("steps up to %d: %d update(s) had a non-finite loss, gradient or update "
                      "and were skipped (nan_policy='skip'; %d in all)", info.step, skipped,
                      self.total_skipped)


def evaluate(eval_step: Callable, params: Any, batches: Iterable[Any],
             put_batch: Callable[[Any], Any] = lambda b: b) -> dict[str, float]:
  """Count-weighted means of the model's loss sums over all eval batches."""
  totals: dict[str, float] = {}
  for batch in batches:
    sums = jax.device_get(eval_step(params, put_batch(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  if not totals:
    return {}
  count = max(contract.count_of(totals), 1.0)
  return {k: (v if k in contract.COUNT_KEYS else v / count) for k, v in totals.items()}


class Evaluate:
  """Runs `evaluate` on the current params; writes eval/* metrics; keeps the last."""

  def __init__(self, eval_step: Callable, batches: Callable[[], Iterable[Any]], *,
               writer: metrics_lib.MetricWriter | None = None,
               put_batch: Callable[[Any], Any] = lambda b: b, prefix: str = "eval/",
               log: bool = True):
    self.eval_step, self.batches, self.writer = eval_step, batches, writer
    self.put_batch, self.prefix, self.log = put_batch, prefix, log
    self.last: dict[str, float] = {}

  def __call__(self, info) -> None:
    if info.final and info.loop.preempted:
      return  # a preempted run saves and leaves; it evaluates when resumed
    self.last = evaluate(self.eval_step, info.state.params, self.batches(), self.put_batch)
    if self.writer is not None:
      self.writer.write(info.step, {f"{self.prefix}{k}": v for k, v in self.last.items()})
    if self.log and jax.process_index() == 0:
      logging.info("step %d %s %s", info.step, self.prefix.rstrip("/"),
                   ", ".join(f"{k}={v:.4f}" for k, v in self.last.items()))


class SaveCheckpoint:
  """Saves the state and the data position when it fires (add it with
  `every=checkpoint.every, at_end=True`: the end and preemption save too),
  after the hooks that write the step's metrics, so that a checkpoint never
  exists without its step's metrics. `check` (add it with `every=1`) raises
  `checkpoint.CheckpointSaveError` as soon as an asynchronous write has failed
  (e.g. disk full), instead of training on for another checkpoint interval."""

  def __init__(self, checkpointer, data_state: Callable[[], Any]):
    self.checkpointer, self.data_state = checkpointer, data_state

  def __call__(self, info) -> None:
    self.checkpointer.save(info.step, info.state, self.data_state(), force=True)

  def check(self, info) -> None:
    del info
    self.checkpointer.check()


class EarlyStop:
  """Stops the loop once `metric` (from the step metrics or `source()`) reaches
  `threshold` (mode "max": >=, "min": <=)."""

  def __init__(self, metric: str, threshold: float, mode: str = "max",
               source: Callable[[], dict[str, float]] | None = None):
    if mode not in ("max", "min"):
      raise ValueError(f"EarlyStop mode={mode!r} must be 'max' or 'min'")
    self.metric, self.threshold, self.mode, self.source = metric, threshold, mode, source

  def __call__(self, info) -> None:
    values = self.source() if self.source is not None else info.metrics
    value = values.get(self.metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
      return
    hit = value >= self.threshold if self.mode == "max" else value <= self.threshold
    if hit:
      info.loop.request_stop(f"{self.metric}={value:.4g} reached {self.threshold}")
