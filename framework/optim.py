"""Optimizers and learning-rate schedules from the config: the one factory.

config.optimizer
  name            adamw | adam | sgd | shampoo | soap | normalized_gd
  b1, b2, eps     Adam's decays and epsilon, given to every optimizer that has
                  the same quantity (table below)
  momentum        SGD's momentum; 0 or None: plain SGD
  weight_decay    see the table
  grad_clip_norm  clip the gradient's global norm to this first (0: no clip);
                  every optimizer
  kwargs          further keyword arguments of the optimizer's function
                  (optax.adamw, optax.adam, optax.sgd, optimizers.shampoo,
                  optimizers.soap, optimizers.normalized_sgd)

Where each field goes (keyword of the optimizer's function; - : no meaning):

  field         adamw         adam  sgd            shampoo   soap  normalized_gd
  b1            b1            b1    -              b1        b1    -
  b2            b2            b2    -              b2        b2    -
  eps           eps           eps   -              diag_eps  eps   -
  momentum      -             -     momentum       -         -     -
  weight_decay  weight_decay  -     L2 (gradient   weight_decay (decoupled, as
                (decoupled)         + wd theta)    AdamW's)
                                    before momentum)

Shampoo's b2 decays its Kronecker factors and (as graft_b2's default) its
diagonal second moment; its eps is the epsilon of that diagonal (Adam graft
and fallback) direction, not the ridge `epsilon` (a kwarg). normalized_gd's
own eps (a guard for ||g|| ~ 0, default 1e-30) is a kwarg: Adam's eps is not
that quantity.

A field either takes effect or is rejected: a field with no meaning for the
chosen optimizer must be absent, None or equal to its default in
`FIELD_DEFAULTS` (so one config can switch between optimizers), else
`ConfigError` names it. A field with a meaning that is absent or None takes
its `FIELD_DEFAULTS` value (momentum None: plain SGD). A kwarg may set a
field's keyword only if the field is absent, None or equal to it.

config.schedule
  name            constant | cosine | warmup_cosine | warmup_linear | warmup_rsqrt
  peak_lr, warmup_steps, end_lr_fraction; decay runs over total_steps.
  cosine: optax.cosine_decay_schedule(peak_lr, total_steps,
  alpha=end_lr_fraction), no warmup (warmup_steps must be 0).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import optax

import optimizers
from framework.config import ConfigError

SCHEDULES = ("constant", "cosine", "warmup_cosine", "warmup_linear", "warmup_rsqrt")
OPTIMIZERS = ("adamw", "adam", "sgd", "shampoo", "soap", "normalized_gd")

# Fields of config.optimizer and the values at which a field with no meaning
# for the chosen optimizer is accepted (Adam's defaults; SGD's momentum 0.9).
FIELD_DEFAULTS: Mapping[str, Any] = {
    "b1": 0.9, "b2": 0.999, "eps": 1e-8, "momentum": 0.9, "weight_decay": 0.0,
    "grad_clip_norm": 0.0,
}
_OTHER_FIELDS = ("name", "kwargs")

# Per optimizer: config field -> keyword of its function.
_KEYWORDS: Mapping[str, Mapping[str, str]] = {
    "adamw": {"b1": "b1", "b2": "b2", "eps": "eps", "weight_decay": "weight_decay"},
    "adam": {"b1": "b1", "b2": "b2", "eps": "eps"},
    "sgd": {"momentum": "momentum", "weight_decay": "weight_decay"},
    "shampoo": {"b1": "b1", "b2": "b2", "eps": "diag_eps", "weight_decay": "weight_decay"},
    "soap": {"b1": "b1", "b2": "b2", "eps": "eps", "weight_decay": "weight_decay"},
    "normalized_gd": {"weight_decay": "weight_decay"},
}


def _sgd(learning_rate, momentum=0.9, weight_decay=0.0, **kwargs):
  """L2-regularised SGD: g + weight_decay theta, then (momentum) SGD."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.sgd(learning_rate, momentum=momentum or None, **kwargs))


_FACTORIES: Mapping[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": optax.adamw,
    "adam": optax.adam,
    "sgd": _sgd,
    "shampoo": optimizers.shampoo,
    "soap": optimizers.soap,
    "normalized_gd": optimizers.normalized_sgd,
}


def make_schedule(sched: Any, total_steps: int) -> optax.Schedule:
  name = sched.name
  peak = float(sched.peak_lr)
  warmup = int(sched.get("warmup_steps", 0) or 0)
  end = peak * float(sched.get("end_lr_fraction", 0.0))
  if name == "constant":
    return optax.constant_schedule(peak) if not warmup else optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  if name == "cosine":
    if warmup:
      raise ConfigError(f"config.schedule.warmup_steps={warmup} has no effect with "
                        "schedule 'cosine' (no warmup); set it to 0 or use 'warmup_cosine'")
    return optax.cosine_decay_schedule(peak, max(total_steps, 1),
                                       alpha=float(sched.get("end_lr_fraction", 0.0)))
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
  raise ConfigError(f"config.schedule.name={name!r} is not one of {SCHEDULES}")


def optimizer_kwargs(opt: Any) -> dict[str, Any]:
  """Keyword arguments (besides the learning rate) for opt.name's function.

  Applies the field table of the module doc; raises ConfigError for an
  unknown name or field, a field with no meaning that is not at its default,
  or a field and a kwarg that disagree.
  """
  name = opt.get("name", None)
  if name not in _KEYWORDS:
    raise ConfigError(f"config.optimizer.name={name!r} is not one of {OPTIMIZERS}")
  unknown = [k for k in opt.keys() if k not in FIELD_DEFAULTS and k not in _OTHER_FIELDS]
  if unknown:
    raise ConfigError(f"config.optimizer.{unknown[0]}: unknown field; the fields are "
                      f"{sorted(FIELD_DEFAULTS) + list(_OTHER_FIELDS)}")
  kwargs = dict(opt.get("kwargs", None) or {})
  if "learning_rate" in kwargs:
    raise ConfigError("config.optimizer.kwargs.learning_rate: the learning rate comes "
                      "from config.schedule")
  keywords = _KEYWORDS[name]
  for field, default in FIELD_DEFAULTS.items():
    if field == "grad_clip_norm":
      continue
    given = opt.get(field, None) is not None
    value = opt.get(field) if given else default
    if field not in keywords:
      if given and value != default:
        users = [o for o in OPTIMIZERS if field in _KEYWORDS[o]]
        raise ConfigError(
            f"config.optimizer.{field}={value!r} has no effect with optimizer {name!r} "
            f"(it is used by {', '.join(users)}); remove it or set it to {default!r}")
      continue
    key = keywords[field]
    if key in kwargs:
      if given and kwargs[key] != value:
        raise ConfigError(
            f"config.optimizer.{field}={value!r} and config.optimizer.kwargs.{key}="
            f"{kwargs[key]!r} both set {name}'s {key}; set only one")
      continue
    if field == "momentum" and field in opt and not given:
      value = None  # momentum: None -> plain SGD
    kwargs[key] = value
  return kwargs


def make_optimizer(opt: Any, schedule: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """config.optimizer (see the module doc) -> optax transformation with lr `schedule`."""
  kwargs = optimizer_kwargs(opt)
  tx = _FACTORIES[opt.get("name")](schedule, **kwargs)
  clip = opt.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx
