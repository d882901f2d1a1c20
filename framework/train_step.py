"""The jitted train and eval steps.

Models expose `loss(batch) -> {"loss": sum, "tokens": count, <metric>: sum}`
(sums, not means). The step divides by the total token count, so gradient
accumulation over M micro-batches is exactly one big batch:

  g = (sum_m grad sum_{t in m} l_t) / (sum_m |m|).

Micro-batch m takes rows m, m + M, m + 2M, ... of the global batch, so each
device already holds its share of every micro-batch (no resharding).

Non-finite loss or gradients: `nan_policy="skip"` keeps the old params and
optimizer state for that step (the step counter still advances, since the
batch was consumed) and reports `nonfinite=1`; `"stop"` makes the loop raise.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from framework import sharding as sharding_lib
from framework.train_state import TrainState

NAN_POLICIES = ("skip", "stop")


def _split_microbatches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num}")
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def _loss_sums(model: nn.Module, params: Any, batch: dict[str, jax.Array]):
  sums = model.apply({"params": params}, batch, method="loss")
  return sums["loss"], sums


def compute_grads(model: nn.Module, params: Any, batch: dict[str, jax.Array],
                  num_microbatches: int = 1):
  """Returns (summed grads, summed metrics) over all micro-batches."""
  grad_fn = jax.grad(lambda p, b: _loss_sums(model, p, b), has_aux=True)
  if num_microbatches <= 1:
    return grad_fn(params, batch)
  micro = _split_microbatches(batch, num_microbatches)

  def body(carry, mb):
    acc_grads, acc_sums = carry
    grads, sums = grad_fn(params, mb)
    acc_grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc_grads, grads)
    acc_sums = jax.tree.map(jnp.add, acc_sums, sums)
    return (acc_grads, acc_sums), None

  zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  first = jax.tree.map(lambda x: x[0], micro)
  zeros_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(lambda: _loss_sums(model, params, first)[1]))
  (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  return grads, sums


def _means(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  tokens = jnp.maximum(sums["tokens"], 1.0)
  out = {k: v / tokens for k, v in sums.items() if k != "tokens"}
  out["tokens"] = sums["tokens"]
  return out


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    schedule: Callable[[Any], Any] | None = None,
                    num_microbatches: int = 1) -> Callable[[TrainState, dict], tuple]:
  """The un-jitted step: (state, batch) -> (state, metrics)."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    grad_sums, sums = compute_grads(model, state.params, batch, num_microbatches)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / tokens.astype(g.dtype), grad_sums)
    grad_norm = optax.global_norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    metrics = _means(sums)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    rng, _ = jax.random.split(state.rng)
    new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                           opt_state=keep(new_opt_state, state.opt_state), rng=rng)
    metrics["grad_norm"] = grad_norm
    metrics["param_norm"] = optax.global_norm(new_state.params)
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable[[Any, dict], dict]:
  def eval_step(params, batch):
    return model.apply({"params": params}, batch, method="loss")
  return eval_step


def jit_train_step(step_fn: Callable, state_shardings: TrainState, mesh: Mesh,
                   rules: Any, example_batch: dict[str, Any]) -> Callable:
  """jit with explicit in/out shardings and the state donated.

  The returned callable enters the mesh and logical-rule contexts so that
  activation constraints inside the model resolve against this mesh.
  """
  batch_shardings = {k: sharding_lib.batch_sharding(mesh, jnp.ndim(v))
                     for k, v in example_batch.items()}
  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  rules = sharding_lib.normalize_rules(rules)

  def run(state, batch):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(state, batch)

  run.jitted = jitted
  run.lower = lambda state, batch: _lower(jitted, mesh, rules, state, batch)
  return run


def _lower(jitted, mesh, rules, state, batch):
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jitted.lower(state, batch)


def jit_eval_step(eval_fn: Callable, param_shardings: Any, mesh: Mesh, rules: Any,
                  example_batch: dict[str, Any]) -> Callable:
  batch_shardings = {k: sharding_lib.batch_sharding(mesh, jnp.ndim(v))
                     for k, v in example_batch.items()}
  jitted = jax.jit(eval_fn, in_shardings=(param_shardings, batch_shardings),
                   out_shardings=NamedSharding(mesh, P()))
  rules = sharding_lib.normalize_rules(rules)

  def run(params, batch):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(params, batch)
  return run
