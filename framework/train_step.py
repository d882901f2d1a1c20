"""The jitted train and eval steps, for any model that meets `models.contract`.

Models give `loss(params, batch) -> {"loss": sum, "tokens" or "count": n,
<metric>: sum}` (sums, not means). The step divides by the count, so gradient
accumulation over M micro-batches is exactly one big batch:

  g = (sum_m grad sum_{t in m} l_t) / (sum_m |m|).

Micro-batch m takes rows m, m + M, m + 2M, ... of the global batch, so each
device already holds its share of every micro-batch (no resharding).

The guard: the update is applied only if the loss and the gradient norm are
finite; and a non-finite element of the new parameters or optimizer
state (a NaN learning rate or a corrupt optimizer moment makes a non-finite
update from finite gradients) keeps its old value, element by element, fused
into the writes; any such element marks the step non-finite. The parameter
norm is computed only on logging steps (`hooks.LogMetrics`). When the step is
not finite the old params and optimizer state are
kept (the step counter still advances, since the batch was consumed) and the
step reports `nonfinite=1`; `nan_policy="stop"` makes the loop raise before
the next step, `"skip"` goes on (up to `trainer.max_consecutive_skips`).
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
from models import contract

NAN_POLICIES = ("skip", "stop")


def _split_microbatches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
  def split(x):
    if x.ndim == 0:   # a per-step scalar (e.g. batch["step"]): every micro-batch sees it
      return jnp.broadcast_to(x, (num,))
    if x.shape[0] % num:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num}")
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def _loss_sums(model: contract.Model, params: Any, batch: dict[str, jax.Array]):
  sums = model.loss(params, batch)
  return sums["loss"], sums


def compute_grads(model: Any, params: Any, batch: dict[str, jax.Array],
                  num_microbatches: int = 1):
  """Returns (summed grads, summed metrics) over all micro-batches."""
  model = contract.as_model(model)
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


def _guarded_add(ok: jax.Array, p: jax.Array, u: jax.Array) -> jax.Array:
  new = p + u.astype(p.dtype)
  return jnp.where(ok & jnp.isfinite(new), new, p)


def _keep_finite(ok: jax.Array, new: Any, old: Any) -> Any:
  if not jnp.issubdtype(jnp.asarray(new).dtype, jnp.inexact):
    return jnp.where(ok, new, old)
  return jnp.where(ok & jnp.isfinite(new), new, old)


def means(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Every sum divided by the count; the count itself is kept."""
  count = jnp.maximum(contract.count_of(sums), 1.0)
  return {k: (v if k in contract.COUNT_KEYS else v / count) for k, v in sums.items()}


def make_train_step(model: Any, tx: optax.GradientTransformation, *,
                    schedule: Callable[[Any], Any] | None = None,
                    num_microbatches: int = 1) -> Callable[[TrainState, dict], tuple]:
  """The un-jitted step: (state, batch) -> (state, metrics).

  Pure in (state, batch), so it can be jitted, scanned (`scan_steps`) or
  vmapped over a population of states (`framework.population`).
  """
  model = contract.as_model(model)

  def mean_objective(params, batch):
    sums = model.loss(params, batch)
    count = jax.lax.stop_gradient(jnp.maximum(contract.count_of(sums), 1.0))
    return sums["loss"] / count, sums

  mean_grad_fn = jax.grad(mean_objective, has_aux=True)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    if getattr(model, "uses_step", False):
      batch = dict(batch, step=state.step)
    if num_microbatches <= 1:
      # The division by the count is folded into the backward pass.
      grads, sums = mean_grad_fn(state.params, batch)
    else:
      grad_sums, sums = compute_grads(model, state.params, batch, num_microbatches)
      count = jnp.maximum(contract.count_of(sums), 1.0)
      grads = jax.tree.map(lambda g: g / count.astype(g.dtype), grad_sums)
    grad_norm = optax.global_norm(grads)
    metrics = means(sums)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    # Element by element, so the guard fuses into the writes (no second copy of
    # the state, no wait for a global reduction): with a non-finite loss or
    # gradient nothing changes; otherwise a non-finite new parameter or
    # optimizer-state element keeps its old value and is counted.
    params = jax.tree.map(lambda p, u: _guarded_add(ok, p, u), state.params, updates)
    opt_state = jax.tree.map(lambda n, o: _keep_finite(ok, n, o), new_opt_state,
                             state.opt_state)
    bad = sum(jnp.sum(~jnp.isfinite(u), dtype=jnp.int32) for u in jax.tree.leaves(updates))
    finite = ok & (bad == 0)
    rng, _ = jax.random.split(state.rng)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    metrics["grad_norm"] = grad_norm
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    return new_state, metrics

  return train_step


def make_eval_step(model: Any) -> Callable[[Any, dict], dict]:
  """(params, batch) -> the model's loss sums (summed over eval batches by the loop)."""
  return contract.as_model(model).loss


def scan_steps(step_fn: Callable, num_steps: int, *, same_batch: bool = False) -> Callable:
  """`num_steps` steps in one call via `lax.scan` (fewer dispatches for tiny models).

  same_batch=False: every batch leaf has a leading axis of `num_steps` (one
  batch per step). same_batch=True: the one batch is reused (full-batch
  training). Returns the metrics of the last step.
  """
  if num_steps == 1 and not same_batch:
    return step_fn

  def many(state, batch):
    def body(s, b):
      s, metrics = step_fn(s, batch if same_batch else b)
      return s, metrics
    xs = None if same_batch else batch
    state, metrics = jax.lax.scan(body, state, xs, length=num_steps)
    return state, jax.tree.map(lambda m: m[-1], metrics)
  return many


def jit_train_step(step_fn: Callable, state_shardings: TrainState, mesh: Mesh,
                   rules: Any, example_batch: dict[str, Any], stacked: bool = False) -> Callable:
  """jit with explicit in/out shardings and the state donated.

  stacked: batches carry a leading axis of steps (`scan_steps`); the example
  batch is one step's.

  The returned callable enters the mesh and logical-rule contexts so that
  activation constraints inside the model resolve against this mesh.
  """
  batch_shardings = {k: sharding_lib.batch_sharding(mesh, jnp.ndim(v) + stacked, stacked)
                     for k, v in example_batch.items()}
  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  rules = sharding_lib.normalize_rules(rules)

  def run(state, batch):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(state, batch)

  run.jitted = jitted
  run.lower = lambda state, batch: _in_context(jitted.lower, mesh, rules, state, batch)
  run.trace = lambda state, batch: _in_context(jitted.trace, mesh, rules, state, batch)
  return run


def _in_context(method, mesh, rules, state, batch):
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return method(state, batch)


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
