"""The model contract: what every model in `models/` offers the framework.

A model is any object with

  init(rng, batch) -> params
      Fresh parameters for inputs shaped like `batch` (a dict of arrays). A
      pure function of `rng`: the same key gives the same model on one or
      many devices. Leaves may be Flax `nn.LogicallyPartitioned` boxes that
      carry logical axis names; the framework reads the names and unboxes.

  loss(params, batch) -> {"loss": sum, "tokens" or "count": n, <metric>: sum}
      SUMS over the batch, not means. The framework divides every entry by
      the count, so the objective it minimises is loss / count and M
      micro-batches add up exactly to one big batch:
        g = (sum_m grad sum_{i in m} l_i) / (sum_m |m|).
      A model whose objective is not a per-example sum (a norm penalty, the
      log of the loss) returns count * objective as its "loss" sum.

and optionally

  logical_axes(params) -> tree of tuples of logical axis names (or None)
      one per parameter leaf, for models whose `init` returns plain arrays
      (e.g. {"u": ("neurons", "inputs")}). The config's sharding rules map
      the names to mesh axes.

  uses_step = True
      the train step adds the current step to the batch as `batch["step"]`
      (for objectives with a schedule of their own, e.g. a decaying penalty).

Flax modules meet the contract through `FlaxModel`, which calls the module's
`loss` method; `as_model` wraps a module and passes anything else through.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import flax.linen as nn
import jax

Batch = Mapping[str, jax.Array]
Params = Any
COUNT_KEYS = ("tokens", "count")


@runtime_checkable
class Model(Protocol):
  """init(rng, batch) -> params; loss(params, batch) -> dict of sums."""

  def init(self, rng: jax.Array, batch: Batch) -> Params:
    ...

  def loss(self, params: Params, batch: Batch) -> dict[str, jax.Array]:
    ...


class FlaxModel:
  """A Flax module with a `loss(batch)` method, seen through the contract.

  `module` stays reachable for module-specific calls (logits, decoding):
  `model.module.apply({"params": params}, ...)`.
  """

  def __init__(self, module: nn.Module):
    if not hasattr(module, "loss"):
      raise TypeError(f"{type(module).__name__} has no `loss(batch)` method; the model "
                      "contract needs one returning a dict of sums")
    self.module = module

  def init(self, rng: jax.Array, batch: Batch) -> Params:
    return self.module.init(rng, batch, method="loss")["params"]

  def loss(self, params: Params, batch: Batch) -> dict[str, jax.Array]:
    return self.module.apply({"params": params}, batch, method="loss")

  def __repr__(self) -> str:
    return f"FlaxModel({type(self.module).__name__})"

  # Equal modules give equal models, so jit caches keyed on the model hit.
  def __eq__(self, other) -> bool:
    return isinstance(other, FlaxModel) and other.module == self.module

  def __hash__(self) -> int:
    return hash(("FlaxModel", self.module))


def as_model(model: Any) -> Model:
  """The contract view of `model`: Flax modules are wrapped, others checked."""
  if isinstance(model, nn.Module):
    return FlaxModel(model)
  if not isinstance(model, Model):
    raise TypeError(f"{model!r} does not meet the model contract: it needs "
                    "init(rng, batch) and loss(params, batch)")
  return model


def count_of(sums: Mapping[str, jax.Array]) -> jax.Array:
  """The normaliser of a loss dict: its "tokens" or "count" entry."""
  for key in COUNT_KEYS:
    if key in sums:
      return sums[key]
  raise KeyError(f"a model's loss dict needs one of {COUNT_KEYS}; got {sorted(sums)}")
