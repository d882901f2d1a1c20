"""Runner: margin maximisation on algebraic tasks (Morwani et al., ICLR 2024).

`run(config, workdir) -> dict` trains the paper's one-hidden-layer bias-free
networks on a complete algebraic dataset (modular addition, sparse parity or
finite-group composition) with

    L(theta) = mean_{(x,y)} CE(f(theta; x), y) + lambda_t ||theta||_{2,nu}^nu,

lambda_t annealed geometrically from `lambda_start` to `lambda_end` (small
regularisation drives the normalised margin to its maximum as lambda -> 0).
It logs the normalised margin as a fraction of the theoretical maximum, and
writes margin-vs-step and feature plots (Fourier spectra / parity support /
irrep shares) plus `report.md` into workdir.

Config (ml_collections.ConfigDict), see experiments/configs/modadd_small.py:
  task: "modular_addition" | "parity" | "group"
  p: modulus; parity.{n, k, num_samples}; group.{family, n}
  model.{width, activation, init_scale}
  train.{steps, lr, lr_end, optimizer, batch_size, lambda_start,
         lambda_end, lambda_hold, log_every, seed, b2}
  analysis.{active_fraction}
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import optax

from data_pipelines import algebraic as data
from framework.metrics import MetricWriter
from framework.progress import Progress
from models import algebraic as models
from tools import fourier
from tools import group_reps
from tools import margins as margin_lib


# --------------------------------------------------------------------------
# Task set-up.


class Task(NamedTuple):
  dataset: data.AlgebraicDataset
  model: Any
  max_margin: float | None
  group: data.FiniteGroup | None
  support: np.ndarray | None


def build_task(config: ml_collections.ConfigDict) -> Task:
  """Dataset, model and theoretical max margin for config.task."""
  mc = config.model
  if config.task == "modular_addition":
    ds = data.modular_addition(config.p)
    model = models.TwoInputNet(config.p, config.p, mc.width, mc.activation)
    best = (margin_lib.max_margin_modular_addition(config.p)
            if mc.activation == "quadratic" else None)
    return Task(ds, model, best, data.cyclic_group(config.p), None)
  if config.task == "parity":
    pc = config.parity
    ds = data.sparse_parity(pc.n, pc.k, num_samples=pc.num_samples or None,
                            seed=config.train.seed)
    model = models.ParityNet(pc.n, mc.width, degree=pc.k,
                             activation=mc.activation)
    best = (margin_lib.max_margin_parity(pc.k)
            if mc.activation == "power" else None)
    return Task(ds, model, best, None, np.arange(pc.k))
  if config.task == "group":
    group = data.make_group(config.group.family, config.group.n)
    ds = data.group_composition(group)
    model = models.TwoInputNet(group.order, group.order, mc.width,
                               mc.activation)
    best = (margin_lib.max_margin_group(group)
            if mc.activation == "quadratic" else None)
    return Task(ds, model, best, group, None)
  raise ValueError(f"unknown task {config.task!r}")


# --------------------------------------------------------------------------
# Training.


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example log(1 + sum_{y' != y} exp(-(f[y] - f[y']))).

  Written with log1p around the shift m = max(0, max_{y'} f[y'] - f[y]) so
  that the value and the gradients stay accurate in float32 when every
  margin is large (then the usual log-softmax rounds the loss and the
  gradient of the correct logit to exactly 0).
  """
  correct = jnp.take_along_axis(logits, labels[:, None], axis=1)
  z = logits - correct  # z_y = 0, z_y' = -margin_y'.
  wrong = jnp.arange(logits.shape[1])[None] != labels[:, None]
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.where(wrong, z, -jnp.inf),
                                                axis=1, keepdims=True), 0.0))
  s = jnp.sum(jnp.where(wrong, jnp.exp(z - m), 0.0), axis=1, keepdims=True)
  return (m + jnp.log1p(jnp.expm1(-m) + s))[:, 0]


class TrainState(NamedTuple):
  step: jax.Array
  params: Dict[str, jax.Array]
  opt_state: Any


def lambda_at(step, tc) -> jax.Array:
  """lambda_t: held at lambda_start for lambda_hold * steps, then geometric."""
  hold = tc.lambda_hold * tc.steps
  frac = jnp.clip((step - hold) / max(tc.steps - hold, 1), 0.0, 1.0)
  return tc.lambda_start * (tc.lambda_end / tc.lambda_start) ** frac


def make_optimizer(tc) -> optax.GradientTransformation:
  lr = optax.cosine_decay_schedule(tc.lr, tc.steps, alpha=tc.lr_end / tc.lr)
  if tc.optimizer == "adam":
    return optax.adam(lr, b2=tc.b2, eps=tc.eps)
  if tc.optimizer == "normalized_gd":
    # Normalised gradient descent: theta <- theta - lr g / ||g||.
    return optax.chain(_normalize_updates(), optax.scale_by_learning_rate(lr))
  if tc.optimizer == "sgd":
    return optax.sgd(lr, momentum=0.9)
  raise ValueError(f"unknown optimizer {tc.optimizer!r}")


def _normalize_updates() -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    norm = optax.global_norm(updates)
    return jax.tree.map(lambda g: g / (norm + 1e-30), updates), state
  return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_train_chunk(model, optimizer, tc, nu: float, num_examples: int):
  """Jitted `chunk(state, inputs, labels, key, n)`: n steps via lax.scan."""
  batch = tc.batch_size if tc.batch_size else 0

  def loss_fn(params, inputs, labels, lam):
    ce = jnp.mean(cross_entropy(model.apply(params, inputs), labels))
    reg = models.l2nu_penalty(params, nu)
    total = ce + lam * reg
    # log is monotone: same minimisers, gradients rescaled by 1 / total so
    # they stay O(1) once the loss is ~exp(-margin) (Adam's eps and
    # float32 underflow of g^2 would otherwise freeze training).
    return (jnp.log(total) if tc.log_objective else total), ce

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def one_step(carry, key):
    state, inputs, labels = carry
    if batch:
      idx = jax.random.choice(key, num_examples, (batch,), replace=False)
      x, y = inputs[idx], labels[idx]
    else:
      x, y = inputs, labels
    lam = lambda_at(state.step, tc)
    (_, ce), grads = grad_fn(state.params, x, y, lam)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (TrainState(state.step + 1, params, opt_state), inputs, labels), ce

  @functools.partial(jax.jit, static_argnums=4)
  def chunk(state, inputs, labels, key, n):
    keys = jax.random.split(key, n)
    (state, _, _), ces = jax.lax.scan(one_step, (state, inputs, labels), keys)
    return state, ces[-1]

  return chunk


def evaluate(model, params, inputs, labels) -> Dict[str, float]:
  logits = model.apply(params, inputs)
  marg = margin_lib.margins(logits, labels)
  nu = model.homogeneity
  norm_pow = margin_lib.l2nu_norm_pow(params, nu)
  return {
      "loss": float(jnp.mean(cross_entropy(logits, labels))),
      "accuracy": float(jnp.mean(marg > 0)),
      "min_margin": float(jnp.min(marg)),
      "norm_pow": float(norm_pow),
      "normalized_margin": float(jnp.min(marg) / norm_pow),
  }


def train(config, task: Task, writer: MetricWriter | None = None,
          progress: bool = True):
  """Trains; returns (params, history list of dicts, seconds)."""
  tc = config.train
  model = task.model
  nu = model.homogeneity
  key = jax.random.PRNGKey(tc.seed)
  key, init_key = jax.random.split(key)
  params = model.init(init_key, config.model.init_scale)
  optimizer = make_optimizer(tc)
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  inputs = jnp.asarray(task.dataset.inputs)
  labels = jnp.asarray(task.dataset.labels)
  chunk = make_train_chunk(model, optimizer, tc, nu, len(labels))
  history = []
  prog = Progress(tc.steps, config.task) if progress else None
  t0 = time.perf_counter()
  done = 0
  while done < tc.steps:
    n = min(tc.log_every, tc.steps - done)
    key, sub = jax.random.split(key)
    state, _ = chunk(state, inputs, labels, sub, n)
    done += n
    rec = evaluate(model, state.params, inputs, labels)
    rec["lambda"] = float(lambda_at(done, tc))
    if task.max_margin:
      rec["margin_fraction"] = rec["normalized_margin"] / task.max_margin
    rec["step"] = done
    history.append(rec)
    if writer is not None:
      writer.write(done, {f"train/{k}": v for k, v in rec.items()
                          if k != "step"})
    if prog is not None:
      prog.update(n, frac=rec.get("margin_fraction", rec["normalized_margin"]))
  seconds = time.perf_counter() - t0
  return state.params, history, seconds
