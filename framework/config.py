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
