"""The train loop: one readable function.

  mesh -> sharded state (or resume from the newest finished checkpoint) ->
  for step: global batch -> jitted step -> metrics (one step behind, so the
  host never stalls the device) -> periodic log / eval / checkpoint.

Preemption: SIGTERM (and SIGINT) set a flag; the loop saves a checkpoint at
the current step, waits for it, and returns with `preempted=True`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import flax.linen as nn
import jax
import numpy as np

from framework import checkpoint as checkpoint_lib
from framework import flops as flops_lib
from framework import mesh as mesh_lib
from framework import metrics as metrics_lib
from framework import optim
from framework import progress as progress_lib
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib


class NonFiniteLossError(FloatingPointError):
  """Raised under nan_policy='stop' when a step produced a non-finite loss/grad."""


@dataclasses.dataclass
class TrainResult:
  state: Any
  final_step: int
  metrics: dict[str, float]
  eval_metrics: dict[str, float]
  preempted: bool
  resumed_from: Optional[int]


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

  @property
  def requested(self) -> bool:
    return self.event.is_set()


def _example_global_batch(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  n = jax.process_count()
  return {k: np.zeros((v.shape[0] * n,) + v.shape[1:], v.dtype) for k, v in local.items()}


def evaluate(eval_step: Callable, params: Any, batches: Iterable[dict[str, np.ndarray]],
             mesh) -> dict[str, float]:
  """Token-weighted means over all eval batches."""
  totals: dict[str, float] = {}
  for batch in batches:
    sums = jax.device_get(eval_step(params, sharding_lib.global_batch(batch, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  tokens = max(totals.get("tokens", 0.0), 1.0)
  return {k: (v / tokens if k != "tokens" else v) for k, v in totals.items()}


def train(config: Any, model: nn.Module, train_iter: Iterator[dict[str, np.ndarray]], *,
          workdir: str,
          eval_batches: Optional[Callable[[], Iterable[dict[str, np.ndarray]]]] = None,
          flops_per_token: float = 0.0,
          mesh=None,
          step_callback: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
  """Trains `model` on batches from `train_iter` as `config` says.

  `train_iter` yields host-local numpy batches and, to be resumable, has
  `get_state()` / `set_state()`. `config` needs: seed, mesh.shape,
  sharding.rules, optimizer, schedule, trainer (total_steps,
  num_microbatches, log_every, eval_every, nan_policy, peak_flops),
  checkpoint (enabled, every, keep, async_save).
  `step_callback(step, metrics)` runs after each step's metrics are fetched.
  """
  tcfg = config.trainer
  if tcfg.nan_policy not in train_step_lib.NAN_POLICIES:
    raise ValueError(f"config.trainer.nan_policy={tcfg.nan_policy!r} must be one of "
                     f"{train_step_lib.NAN_POLICIES}")
  mesh = mesh if mesh is not None else mesh_lib.create_mesh(dict(config.mesh.shape))
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  total_steps = int(tcfg.total_steps)
  schedule = optim.make_schedule(config.schedule, total_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)

  has_state = hasattr(train_iter, "get_state") and hasattr(train_iter, "set_state")
  if has_state:
    position = train_iter.get_state()
    first = next(train_iter)
    train_iter.set_state(position)
  else:
    raise TypeError("train_iter must offer get_state()/set_state() to be resumable")
  example = _example_global_batch(first)
  tokens_per_step = int(np.prod(example[next(iter(example))].shape[:2]))

  state, shardings = train_state_lib.create_sharded_state(
      model, tx, example, mesh, rules, seed=int(config.seed))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)

  ckpt = None
  resumed_from = None
  if config.checkpoint.enabled:
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=int(config.checkpoint.every),
        keep=int(config.checkpoint.keep), async_save=bool(config.checkpoint.async_save))
    latest = ckpt.latest_step()
    if latest is not None:
      state, data_state = ckpt.restore(latest, abstract, shardings)
      if data_state is not None:
        train_iter.set_state(data_state)
      resumed_from = latest
      logging.info("resumed from checkpoint step %d in %s", latest, ckpt.directory)

  step_fn = train_step_lib.jit_train_step(
      train_step_lib.make_train_step(model, tx, schedule=schedule,
                                     num_microbatches=int(tcfg.num_microbatches)),
      shardings, mesh, rules, example)
  eval_fn = None
  if eval_batches is not None:
    eval_fn = train_step_lib.jit_eval_step(train_step_lib.make_eval_step(model),
                                           shardings.params, mesh, rules, example)

  is_main = jax.process_index() == 0
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  peak, peak_source = flops_lib.peak_flops_per_device(float(tcfg.get("peak_flops", 0.0)))
  n_devices = mesh.devices.size
  start_step = int(jax.device_get(state.step))
  progress = progress_lib.Progress(total_steps, "train", start=start_step,
                                   every_s=float(tcfg.get("progress_every_s", 10.0)),
                                   unit="step", print_fn=(lambda s: logging.info("%s", s))
                                   if not tcfg.get("print_progress", True) else None)
  if is_main:
    logging.info("training %d params on mesh %s; %d tokens/step; peak %.3g FLOP/s/device (%s)",
                 train_state_lib.param_count(state.params), dict(mesh.shape), tokens_per_step,
                 peak, peak_source)

  last_metrics: dict[str, float] = {}
  eval_metrics: dict[str, float] = {}
  window_t0, window_steps = time.perf_counter(), 0
  pending = None  # (step, device metrics) of the step before
  preempted = False

  def finish_pending():
    nonlocal last_metrics, window_t0, window_steps
    step_no, dev_metrics = pending
    host = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    last_metrics = host
    if host.get("nonfinite", 0.0) > 0:
      msg = (f"step {step_no}: non-finite loss={host['loss']} or grad_norm="
             f"{host['grad_norm']}; the update was skipped")
      if tcfg.nan_policy == "stop":
        raise NonFiniteLossError(msg + " (nan_policy='stop')")
      logging.warning("%s (nan_policy='skip')", msg)
    if step_callback is not None:
      step_callback(step_no, host)
    window_steps += 1
    log_now = step_no % int(tcfg.log_every) == 0 or step_no == total_steps
    if log_now:
      elapsed = time.perf_counter() - window_t0
      step_time = elapsed / max(window_steps, 1)
      tps = tokens_per_step / step_time
      record = {f"train/{k}": v for k, v in host.items()}
      record.update({"perf/step_time_s": step_time, "perf/tokens_per_s": tps})
      if flops_per_token:
        record["perf/mfu"] = flops_per_token * tps / (n_devices * peak)
      writer.write(step_no, record)
      window_t0, window_steps = time.perf_counter(), 0
      progress.update(0, force=False, loss=host["loss"], tok_s=round(tps),
                      **({"mfu": record["perf/mfu"]} if flops_per_token else {}))

  with _PreemptionFlag() as preemption:
    try:
      step = start_step
      while step < total_steps:
        batch = next(train_iter)
        state, dev_metrics = step_fn(state, sharding_lib.global_batch(batch, mesh))
        step += 1
        progress.count = step
        if pending is not None:
          finish_pending()
        pending = (step, dev_metrics)
        if ckpt is not None:
          ckpt.save(step, state, train_iter.get_state())
        if eval_fn is not None and (step % int(tcfg.eval_every) == 0 or step == total_steps):
          eval_metrics = evaluate(eval_fn, state.params, eval_batches(), mesh)
          writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
          if is_main:
            logging.info("step %d eval: %s", step,
                         ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
        if preemption.requested:
          logging.warning("preemption signal: saving step %d and stopping", step)
          if ckpt is not None:
            ckpt.save(step, state, train_iter.get_state(), force=True)
          preempted = True
          break
      if pending is not None:
        finish_pending()
        pending = None
      if ckpt is not None and not preempted:
        ckpt.save(step, state, train_iter.get_state(), force=True)
    finally:
      if ckpt is not None:
        ckpt.close()
      writer.close()

  return TrainResult(state=state, final_step=int(jax.device_get(state.step)),
                     metrics=last_metrics, eval_metrics=eval_metrics,
                     preempted=preempted, resumed_from=resumed_from)
