"""Config checks that run before anything compiles.

`check_keys(config, reference)` rejects keys that the reference config (the
runner's defaults) does not have, with the closest known key as a hint, so a
typo like `trainer.totl_steps` fails at start instead of being ignored.
"""
from __future__ import annotations

import difflib
from typing import Any

import ml_collections

# Sub-trees whose keys are free-form here, wherever they sit (`optimizer.kwargs`,
# `base.model`): keyword arguments, and the model's fields, which
# `models.registry` checks against the named model's config dataclass.
FREE_FORM = ("kwargs", "model")


def _free(name: str) -> bool:
  return name.rsplit(".", 1)[-1] in FREE_FORM


class ConfigError(ValueError):
  """A config value or key is invalid; the message names the field."""


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  items = cfg.items() if isinstance(cfg, (ml_collections.ConfigDict, dict)) else []
  for key, value in items:
    name = f"{prefix}{key}"
    if _free(name):
      out[name] = value
    elif isinstance(value, (ml_collections.ConfigDict, dict)):
      out[name] = value
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  known = _flatten(reference)
  unknown = [k for k in _flatten(config) if k not in known]
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, list(known), n=1)
      hints.append(f"{key}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ConfigError("unknown config key(s): " + ", ".join(hints))


def require(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def check_training(config: ml_collections.ConfigDict, *, known_optimizers: tuple[str, ...],
                   known_schedules: tuple[str, ...], nan_policies: tuple[str, ...]) -> None:
  """Checks the sections every trained config shares (optimizer, schedule,
  trainer, checkpoint) before any data is read, naming the field."""
  import math  # pylint: disable=g-import-not-at-top
  opt, sched, tr = config.optimizer, config.schedule, config.trainer
  require(opt.name in known_optimizers, "optimizer.name",
          f"{opt.name!r} is not one of {list(known_optimizers)}")
  require(sched.name in known_schedules, "schedule.name",
          f"{sched.name!r} is not one of {list(known_schedules)}")
  for field in ("peak_lr", "end_lr_fraction"):
    if field in sched:
      value = float(sched[field])
      require(math.isfinite(value) and value >= 0, f"schedule.{field}",
              f"{sched[field]!r} must be finite and >= 0")
  require(int(sched.get("warmup_steps", 0)) >= 0, "schedule.warmup_steps", "must be >= 0")
  for field in ("weight_decay", "grad_clip_norm"):
    if field in opt:
      value = float(opt[field])
      require(math.isfinite(value) and value >= 0, f"optimizer.{field}",
              f"{opt[field]!r} must be finite and >= 0")
  require(tr.nan_policy in nan_policies, "trainer.nan_policy",
          f"{tr.nan_policy!r} is not one of {list(nan_policies)}")
  require(int(tr.total_steps) > 0, "trainer.total_steps", "must be positive")
  for field in ("log_every", "eval_every"):
    require(int(tr[field]) >= 1, f"trainer.{field}", "must be >= 1")
  per_call = int(tr.get("steps_per_call", 1))
  require(per_call >= 1 and int(tr.total_steps) % per_call == 0, "trainer.steps_per_call",
          f"{per_call} must be >= 1 and divide trainer.total_steps={tr.total_steps}")
  require(int(tr.get("max_consecutive_skips", 0)) >= 0, "trainer.max_consecutive_skips",
          "must be >= 0 (0: never stop for skipped steps)")
  if "checkpoint" in config and config.checkpoint.enabled:
    require(int(config.checkpoint.every) >= 1, "checkpoint.every", "must be >= 1")
    require(int(config.checkpoint.keep) >= 0, "checkpoint.keep", "must be >= 0")
