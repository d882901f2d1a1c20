"""`train`: the common loop (`framework.loop`) wired with the standard hooks.

  mesh -> sharded state (or resume from the newest finished checkpoint) ->
  Loop(jitted step, batches) with hooks: NaN guard, metrics + progress,
  eval, checkpoints, and whatever the caller adds (`hooks=[(fn, every)]`).

Any model that meets `models.contract` trains here: the transformer LM, the
MLP/CNN classifiers and every study's model. `trainer.steps_per_call > 1` runs
that many steps per dispatch (`train_step.scan_steps`), drawing one batch
per step, or reusing one batch when `trainer.full_batch` is set.

Preemption: SIGTERM (and SIGINT) stop the loop after the current step; the
checkpoint hook saves that step and `train` returns with `preempted=True`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np

from framework import checkpoint as checkpoint_lib
from framework import config as config_lib
from framework import flops as flops_lib
from framework import hooks as hooks_lib
from framework import loop as loop_lib
from framework import mesh as mesh_lib
from framework import metrics as metrics_lib
from framework import optim
from framework import progress as progress_lib
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib
from models import contract

NonFiniteLossError = hooks_lib.NonFiniteLossError
evaluate = hooks_lib.evaluate


@dataclasses.dataclass
class TrainResult:
  state: Any
  final_step: int
  metrics: dict[str, float]
  eval_metrics: dict[str, float]
  preempted: bool
  resumed_from: Optional[int]
  stop_reason: Optional[str] = None


class _Batches:
  """Host batches -> global device batches, `steps_per_call` at a time."""

  def __init__(self, it: Iterator, mesh, steps_per_call: int, full_batch: bool):
    self.it, self.mesh, self.k, self.full = it, mesh, steps_per_call, full_batch
    self._cached = None

  def __iter__(self):
    return self

  def __next__(self):
    if self.full:
      if self._cached is None:
        self._cached = sharding_lib.global_batch(next(self.it), self.mesh)
      return self._cached
    if self.k == 1:
      return sharding_lib.global_batch(next(self.it), self.mesh)
    host = [next(self.it) for _ in range(self.k)]
    stacked = {key: np.stack([b[key] for b in host]) for key in host[0]}
    return sharding_lib.global_batch(stacked, self.mesh, stacked=True)


def check_config(config: Any) -> None:
  """The checks of `framework.config.check_training` with the framework's names."""
  config_lib.check_training(config, known_optimizers=optim.OPTIMIZERS,
                            known_schedules=optim.SCHEDULES,
                            nan_policies=train_step_lib.NAN_POLICIES)


def train(config: Any, model: Any, train_iter: Iterator[dict[str, np.ndarray]], *,
          workdir: str,
          eval_batches: Optional[Callable[[], Iterable[dict[str, np.ndarray]]]] = None,
          flops_per_token: float = 0.0,
          mesh=None,
          step_callback: Optional[Callable[[int, dict], None]] = None,
          hooks: Sequence[tuple[Callable[[loop_lib.StepInfo], Any], int]] = (),
          init_state: Optional[Callable[[Any], Any]] = None,
          writer: Optional[metrics_lib.MetricWriter] = None) -> TrainResult:
  """Trains `model` (anything meeting `models.contract`) as `config` says.

  `train_iter` yields host-local numpy batches and, to be resumable, has
  `get_state()` / `set_state()`. `config` needs: seed, mesh.shape,
  sharding.rules, optimizer, schedule, trainer (total_steps,
  num_microbatches, log_every, eval_every, nan_policy, peak_flops; optional
  steps_per_call, full_batch), checkpoint (enabled, every, keep, async_save).
  `step_callback(step, metrics)` runs after every step with host metrics
  (it makes each step wait for the host: for tests and small studies).
  `hooks`: extra (fn(info), every) pairs, run after the standard ones.
  `init_state(state) -> state` adjusts a fresh (not resumed) state, e.g. to
  load parameters the study initialises itself.
  `writer`: an open MetricWriter to log into instead of a new one in workdir
  (the caller closes it), so that the caller's hooks write to the same
  metrics.jsonl and TensorBoard run.
  """
  model = contract.as_model(model)
  check_config(config)
  tcfg = config.trainer
  mesh = mesh if mesh is not None else mesh_lib.create_mesh(dict(config.mesh.shape))
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  total_steps = int(tcfg.total_steps)
  steps_per_call = int(tcfg.get("steps_per_call", 1))
  full_batch = bool(tcfg.get("full_batch", False))
  schedule = optim.make_schedule(config.schedule, total_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)

  if not (hasattr(train_iter, "get_state") and hasattr(train_iter, "set_state")):
    raise TypeError("train_iter must offer get_state()/set_state() to be resumable")
  position = train_iter.get_state()
  example = sharding_lib.example_global_batch(next(train_iter))
  train_iter.set_state(position)

  state, shardings = train_state_lib.create_sharded_state(
      model, tx, example, mesh, rules, seed=int(config.seed))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)

  ckpt = None
  resumed_from = None
  if config.checkpoint.enabled:
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=int(config.checkpoint.every),
        keep=int(config.checkpoint.keep), async_save=bool(config.checkpoint.async_save))
    restored = ckpt.restore_latest(abstract, shardings)  # newest step that verifies
    if restored is not None:
      latest, state, data_state = restored
      if data_state is not None:
        train_iter.set_state(data_state)
      resumed_from = latest
      logging.info("resumed from checkpoint step %d in %s", latest, ckpt.directory)
  if resumed_from is None and init_state is not None:
    state = jax.device_put(init_state(state), shardings)

  step_fn = train_step_lib.make_train_step(model, tx, schedule=schedule,
                                           num_microbatches=int(tcfg.num_microbatches))
  step_fn = train_step_lib.jit_train_step(
      train_step_lib.scan_steps(step_fn, steps_per_call, same_batch=full_batch),
      shardings, mesh, rules, example, stacked=steps_per_call > 1 and not full_batch)
  put = lambda b: sharding_lib.global_batch(b, mesh)

  is_main = jax.process_index() == 0
  own_writer = writer is None
  if own_writer:
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  peak, peak_source = flops_lib.peak_flops_per_device(float(tcfg.get("peak_flops", 0.0)))
  start_step = int(jax.device_get(state.step))
  print_fn = ((lambda s: logging.info("%s", s)) if not tcfg.get("print_progress", True)
              else None)
  progress = progress_lib.Progress(total_steps, "train", start=start_step,
                                   every_s=float(tcfg.get("progress_every_s", 10.0)),
                                   unit="step",
                                   print_fn=print_fn if is_main else (lambda s: None))
  if is_main:
    logging.info("training %d params on mesh %s; peak %.3g FLOP/s/device (%s)",
                 train_state_lib.param_count(state.params), dict(mesh.shape), peak, peak_source)

  loop = loop_lib.Loop(step_fn, state, _Batches(train_iter, mesh, steps_per_call, full_batch),
                       total_steps=total_steps, start_step=start_step,
                       steps_per_call=steps_per_call)
  log = hooks_lib.LogMetrics(writer, flops_per_token=flops_per_token,
                             peak_flops_total=peak * mesh.devices.size, progress=progress,
                             start_step=start_step)
  nan_guard = hooks_lib.NanGuard(tcfg.nan_policy, int(tcfg.get("max_consecutive_skips", 0)))
  loop.add_hook(log.accumulate, every=1)
  loop.add_hook(nan_guard, every=1)
  if step_callback is not None:
    loop.add_hook(lambda info: step_callback(info.step, info.metrics), every=1)
  evaluator = None
  if eval_batches is not None:
    eval_fn = train_step_lib.jit_eval_step(train_step_lib.make_eval_step(model),
                                           shardings.params, mesh, rules, example)
    evaluator = hooks_lib.Evaluate(eval_fn, eval_batches, writer=writer, put_batch=put)
    loop.add_hook(evaluator, every=int(tcfg.eval_every), at_end=True)
  loop.add_hook(log, every=int(tcfg.log_every), at_end=True)
  loop.add_hook(nan_guard.report, every=int(tcfg.log_every), at_end=True)
  for fn, every in hooks:
    loop.add_hook(fn, every=int(every))
  if ckpt is not None:  # last: a step's metrics are written before its checkpoint
    saver = hooks_lib.SaveCheckpoint(ckpt, train_iter.get_state)
    loop.add_hook(saver.check, every=1)  # a failed asynchronous write stops the run at once
    loop.add_hook(saver, every=int(config.checkpoint.every), at_end=True)
    writer.resume(start_step)  # drop records of the steps this run redoes

  try:
    result = loop.run()
  finally:
    if ckpt is not None:
      ckpt.close()
    if own_writer:
      writer.close()
    else:
      writer.flush()
  if result.preempted:
    logging.warning("preempted: saved step %d and stopped", result.step)
  return TrainResult(state=result.state, final_step=int(jax.device_get(result.state.step)),
                     metrics=result.metrics or (  # nothing left to run: the last logged
                         metrics_lib.last_logged(writer.path) if resumed_from is not None else {}),
                     eval_metrics=evaluator.last if evaluator is not None else {},
                     preempted=result.preempted, resumed_from=resumed_from,
                     stop_reason=result.stop_reason)
