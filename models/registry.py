"""Model registry: `config.model.name` -> a model that meets the contract.

Each model module registers a builder together with its config dataclass:

  @registry.register("transformer", TransformerConfig)
  def _build(cfg: TransformerConfig) -> Model: ...

and a config names the model and splats its fields into that dataclass
(nanodo-style): `config.model = dict(name="transformer", d_model=256, ...)`.
`build(config.model)` rejects a field the dataclass does not have, naming it.
Modules listed in `_MODULES` are imported on first lookup, so importing the
registry stays cheap and has no import cycles.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Callable, Mapping, NamedTuple

_MODULES = (
    "models.transformer",
    "models.mlp",
    "models.cnn",
    "models.sparse_mlp",
    "models.algebraic_nets",
    "models.genqot",
    "models.matformer",
)


class Entry(NamedTuple):
  config_cls: type
  build: Callable[[Any], Any]


_REGISTRY: dict[str, Entry] = {}
_loaded = False


def register(name: str, config_cls: type):
  """Decorator: registers `build(config) -> model` under `name`."""
  if not dataclasses.is_dataclass(config_cls):
    raise TypeError(f"model {name!r}: config class {config_cls} must be a dataclass")

  def deco(build):
    _REGISTRY[name] = Entry(config_cls, build)
    return build
  return deco


def _load() -> None:
  global _loaded
  if not _loaded:
    for module in _MODULES:
      importlib.import_module(module)
    _loaded = True


def names() -> list[str]:
  _load()
  return sorted(_REGISTRY)


def entry(name: str) -> Entry:
  _load()
  if name not in _REGISTRY:
    raise ValueError(f"config.model.name={name!r} is not a registered model; "
                     f"choose from {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def _plain(value: Any) -> Any:
  """ConfigDict values -> hashable dataclass values (lists become tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  if hasattr(value, "to_dict"):
    return value.to_dict()
  return value


def make_config(spec: Mapping[str, Any]) -> Any:
  """The named model's config dataclass filled from `spec` (which has `name`)."""
  spec = dict(spec)
  name = spec.pop("name", None)
  if name is None:
    raise ValueError("config.model needs a `name` naming a registered model "
                     f"(one of {names()})")
  cls = entry(name).config_cls
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(spec) - fields)
  if unknown:
    hints = [k + (f" (did you mean {c[0]}?)" if (c := difflib.get_close_matches(k, fields, 1))
                  else "") for k in unknown]
    raise ValueError(f"config.model: {', '.join(hints)} not a field of {cls.__name__} "
                     f"(model {name!r}; fields: {sorted(fields)})")
  return cls(**{k: _plain(v) for k, v in spec.items()})


def build(spec: Mapping[str, Any]) -> Any:
  """A model meeting the contract, from `config.model` (name + config fields)."""
  name = dict(spec).get("name")
  return entry(name).build(make_config(spec))
