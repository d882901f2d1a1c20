"""Optimizers and learning-rate schedules from the config.

config.optimizer:  name (adamw | sgd | shampoo | soap), b1, b2, eps, weight_decay,
                   grad_clip_norm, kwargs (extra keyword arguments for the optimizer)
config.schedule:   name (constant | warmup_cosine | warmup_linear | warmup_rsqrt),
                   peak_lr, warmup_steps, end_lr_fraction; decay runs over total_steps.
"""
from __future__ import annotations

from typing import Any

import optax

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "warmup_rsqrt")
OPTIMIZERS = ("adamw", "sgd", "shampoo", "soap")


def make_schedule(sched: Any, total_steps: int) -> optax.Schedule:
  name = sched.name
  peak = float(sched.peak_lr)
  warmup = int(sched.get("warmup_steps", 0))
  end = peak * float(sched.get("end_lr_fraction", 0.0))
  if name == "constant":
    return optax.constant_schedule(peak) if not warmup else optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1),
                                              max(total_steps, warmup + 1), end)
  if name == "warmup_linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)),
         optax.linear_schedule(peak, end, max(total_steps - warmup, 1))], [max(warmup, 1)])
  if name == "warmup_rsqrt":
    w = max(warmup, 1)
    return lambda step: peak * optax.linear_schedule(0.0, 1.0, w)(step) * (
        (w / optax.safe_increment(step).astype(float).clip(min=w)) ** 0.5)
  raise ValueError(f"config.schedule.name={name!r} is not one of {SCHEDULES}")


def make_optimizer(opt: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  name = opt.name
  kwargs = dict(opt.get("kwargs", {}) or {})
  wd = float(opt.get("weight_decay", 0.0))
  if name == "adamw":
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd, **kwargs)
  elif name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(),
                     optax.sgd(schedule, momentum=opt.get("momentum", 0.9) or None, **kwargs))
  elif name in ("shampoo", "soap"):
    import optimizers  # pylint: disable=g-import-not-at-top
    factory = getattr(optimizers, name)
    tx = factory(schedule, weight_decay=wd, **kwargs)
  else:
    raise ValueError(f"config.optimizer.name={name!r} is not one of {OPTIMIZERS}")
  clip = opt.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx
