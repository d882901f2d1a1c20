"""The train state pytree and its sharded creation.

TrainState = (step, params, opt_state, rng). `create_sharded_state` traces the
initialiser abstractly (`jax.eval_shape`), derives NamedShardings from the
logical axis names, and runs the initialiser under `jax.jit` with those
out_shardings, so every device materialises only its own shard: no full copy
of the model ever sits on one device.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from framework import sharding as sharding_lib
from models import contract


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key data, so checkpoints need no PRNG-key dtype


def param_shardings(model: Any, rng: jax.Array, example_batch: dict[str, Any], mesh: Mesh,
                    rules: Any) -> tuple[Any, Any]:
  """(abstract unboxed params, their NamedShardings) from the model's logical names."""
  model = contract.as_model(model)
  boxed = jax.eval_shape(model.init, rng, example_batch)
  params = nn.meta.unbox(boxed)
  axes = model.logical_axes(params) if hasattr(model, "logical_axes") else None
  return params, sharding_lib.logical_shardings(boxed, mesh, rules, logical_axes=axes)


def state_shardings(model: Any, tx: optax.GradientTransformation,
                    example_batch: dict[str, Any], mesh: Mesh, rules: Any,
                    seed: int = 0) -> tuple[TrainState, TrainState]:
  """Returns (abstract_state, shardings) for the train state."""
  params, shardings_p = param_shardings(model, jax.random.PRNGKey(seed), example_batch, mesh,
                                         rules)
  opt_state = jax.eval_shape(tx.init, params)
  opt_shardings = sharding_lib.follow_param_shardings(opt_state, params, shardings_p, mesh)
  replicated = NamedSharding(mesh, P())
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_state,
                        rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)))
  shardings = TrainState(step=replicated, params=shardings_p,
                         opt_state=opt_shardings, rng=replicated)
  return abstract, shardings


def create_sharded_state(model: Any, tx: optax.GradientTransformation,
                         example_batch: dict[str, Any], mesh: Mesh, rules: Any,
                         seed: int = 0) -> tuple[TrainState, TrainState]:
  """Initialises the train state directly in its sharded layout.

  Returns (state, shardings). Parameters depend only on `seed`, not on the
  mesh, so the same seed gives the same model on 1 or many devices.
  """
  model = contract.as_model(model)
  _, shardings = state_shardings(model, tx, example_batch, mesh, rules, seed)

  def init(rng):
    param_rng, state_rng = jax.random.split(rng)
    params = nn.meta.unbox(model.init(param_rng, example_batch))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=state_rng)

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.normalize_rules(rules)):
    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))
  return state, shardings


def param_count(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
