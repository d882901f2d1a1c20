"""Q-probe objectives and the softmax(Q / beta) selection rule (Li et al. 2024).

Setting. For a prompt x the base LM p draws k completions y_1..y_k; each has
an embedding phi_i = phi(x, y_i) in R^D and a reward r_i = r(x, y_i). A
linear Q-probe scores Q_i = w . phi_i + b, and the Q-probe policy picks among
the k samples with

    pi_Q(i | x) = exp(Q_i / beta) / sum_j exp(Q_j / beta),

so that as k grows pi_Q approaches the KL-regularised optimum
p(y|x) exp(Q(x, y) / beta) / Z(x). Its pass@1 on x is the expected reward
E_{i ~ pi_Q}[r_i] = sum_i pi_Q(i | x) r_i (computed exactly, not sampled);
beta -> 0 is argmax_i Q_i and beta -> inf is the base sampler (mean r_i).

Objectives, averaged over prompts (shapes: phi [n, k, D], r [n, k]):
  mse  (reward regression)      mean_{x,i} (Q_i - r_i)^2
  bce  (reward classification)  mean_{x,i} -[r_i log s(Q_i) + (1 - r_i) log(1 - s(Q_i))],
                                s = the logistic sigmoid, r in [0, 1]
  pg   (direct policy learning) -mean_x sum_i pi_Q(i | x) r_i  with beta = beta_train.
       pi_Q(. | x) reweights samples of p by exp(Q / beta) / Z, so this is the
       self-normalised importance-sampling estimate of -E_{y ~ pi_Q}[r], and
       its gradient is the importance-weighted policy gradient
         d/dQ_i = -(1/beta) pi_i (r_i - sum_j pi_j r_j)
       (a per-prompt baseline is built in: adding a constant to every r_i of
       x changes nothing). The paper applies it to random groups of k' <= k
       of a prompt's samples (`chunk`), which is what `pg_groups` draws.
  pref (preferences)            mean_{(x, +, -)} -log s(Q_+ - Q_-)  (Bradley-Terry),
       over pairs where y_+ is preferred to y_-; `preference_pairs` makes them
       from rewards (every pair with r_+ > r_-), standing in for human labels.

Every loss also takes an L2 penalty (lambda / 2) ||w||^2 (not on b).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
LOSSES = ("mse", "bce", "pg", "pref")


# ------------------------------------------------------------------ the probe

def q_values(params: dict[str, Array], phi: Array) -> Array:
  """Q = phi . w + b over the last axis of phi."""
  return jnp.einsum("...d,d->...", phi, params["w"]) + params["b"]


def mse_loss(q: Array, r: Array) -> Array:
  return jnp.mean(jnp.square(q - r))


def bce_loss(q: Array, r: Array) -> Array:
  # -[r log s(q) + (1 - r) log(1 - s(q))] with log s(q) = -softplus(-q).
  return jnp.mean(r * jax.nn.softplus(-q) + (1.0 - r) * jax.nn.softplus(q))


def pg_loss(q: Array, r: Array, beta: float = 1.0, mask: Optional[Array] = None) -> Array:
  """-mean_x sum_i softmax(q_x / beta)_i r_i over the last axis; `mask` [.., k]
  (1 = sample present) lets groups of unequal size share one array."""
  logits = q / beta
  if mask is not None:
    logits = jnp.where(mask > 0, logits, -jnp.inf)
    r = jnp.where(mask > 0, r, 0.0)
  pi = jax.nn.softmax(logits, axis=-1)
  return -jnp.mean(jnp.sum(pi * r, axis=-1))


def pref_loss(q_plus: Array, q_minus: Array) -> Array:
  return jnp.mean(jax.nn.softplus(-(q_plus - q_minus)))


def pg_grad_q(q: np.ndarray, r: np.ndarray, beta: float = 1.0) -> np.ndarray:
  """The closed-form gradient of `pg_loss` w.r.t. q (numpy, [n, k]):
  -(1/(n beta)) pi_i (r_i - sum_j pi_j r_j)."""
  z = q / beta
  z = z - z.max(axis=-1, keepdims=True)
  pi = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
  return -(pi * (r - (pi * r).sum(axis=-1, keepdims=True))) / (beta * q.shape[0])


# ------------------------------------------------------------------ selection

def selection_probs(q: np.ndarray, beta: float) -> np.ndarray:
  """pi_Q(i | x) = softmax(q / beta) over the last axis; beta = 0 puts equal
  mass on the maximisers (argmax, ties split); beta = inf is uniform."""
  q = np.asarray(q, np.float64)
  if beta == 0:
    top = q == q.max(axis=-1, keepdims=True)
    return top / top.sum(axis=-1, keepdims=True)
  if np.isinf(beta):
    return np.full_like(q, 1.0 / q.shape[-1])
  z = q / beta
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def expected_reward(q: np.ndarray, r: np.ndarray, beta: float) -> np.ndarray:
  """Per prompt, E_{i ~ softmax(q / beta)}[r_i]."""
  return (selection_probs(q, beta) * np.asarray(r, np.float64)).sum(axis=-1)


def select(q: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
  """One index per prompt drawn from softmax(q / beta) (argmax for beta = 0)."""
  p = selection_probs(q, beta)
  u = rng.random((p.shape[0], 1))
  return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


# ------------------------------------------------------------------ data shapes

def preference_pairs(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prompt, winner, loser) index arrays of every pair with r_win > r_lose."""
  n, k = r.shape
  rows, wins, loses = [], [], []
  for x in range(n):
    better = r[x][:, None] > r[x][None, :]
    i, j = np.nonzero(better)
    rows.append(np.full(i.shape, x))
    wins.append(i)
    loses.append(j)
  cat = lambda a: np.concatenate(a).astype(np.int32) if a else np.zeros((0,), np.int32)
  return cat(rows), cat(wins), cat(loses)


def pg_groups(k: int, chunk: int, rng: np.random.Generator) -> np.ndarray:
  """A random partition of a prompt's k samples into groups of `chunk`
  (the last one may be smaller): [k // chunk (+1), chunk] indices, -1 = empty."""
  chunk = max(1, min(int(chunk), k))
  perm = rng.permutation(k)
  groups = -np.ones((-(-k // chunk), chunk), np.int64)
  for g in range(groups.shape[0]):
    part = perm[g * chunk:(g + 1) * chunk]
    groups[g, :len(part)] = part
  return groups


# ------------------------------------------------------------------ training

@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  loss: str = "pg"
  steps: int = 300
  learning_rate: float = 1e-2
  l2: float = 1e-3
  beta_train: float = 1.0     # pg only
  chunk: int = 0              # pg only: group size k' (0: all k samples)
  seed: int = 0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"probe loss={self.loss!r} must be one of {LOSSES}")
    if self.beta_train <= 0:
      raise ValueError(f"beta_train={self.beta_train} must be > 0")


@dataclasses.dataclass
class Standardizer:
  """phi -> (phi - mean) / std, fitted on the probe's training embeddings."""
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, phi: np.ndarray) -> "Standardizer":
    flat = phi.reshape(-1, phi.shape[-1]).astype(np.float64)
    return cls(flat.mean(0), np.maximum(flat.std(0), 1e-6))

  def __call__(self, phi: np.ndarray) -> np.ndarray:
    return ((phi - self.mean) / self.std).astype(np.float32)


def objective(loss: str, params: dict[str, Array], phi: Array, r: Array, *,
              beta_train: float = 1.0, pairs: Optional[tuple[Array, Array, Array]] = None,
              groups: Optional[Array] = None, l2: float = 0.0) -> Array:
  """The training objective of `loss` on phi [n, k, D], r [n, k]."""
  q = q_values(params, phi)
  if loss == "mse":
    value = mse_loss(q, r)
  elif loss == "bce":
    value = bce_loss(q, r)
  elif loss == "pg":
    if groups is None:
      value = pg_loss(q, r, beta_train)
    else:   # groups [G, chunk] of sample indices, shared by all prompts
      mask = (groups >= 0).astype(jnp.float32)
      idx = jnp.maximum(groups, 0)
      qg, rg = q[:, idx], r[:, idx]                    # [n, G, chunk]
      value = pg_loss(qg, rg, beta_train, jnp.broadcast_to(mask, qg.shape))
  elif loss == "pref":
    if pairs is None:
      raise ValueError("loss 'pref' needs preference pairs")
    x, win, lose = pairs
    value = pref_loss(q[x, win], q[x, lose])
  else:
    raise ValueError(f"loss={loss!r} must be one of {LOSSES}")
  return value + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


def train_probe(phi: np.ndarray, r: np.ndarray, config: ProbeConfig
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Full-batch Adam on `config.loss`; phi [n, k, D] (already standardised),
  r [n, k]. Returns (params {w, b}, info {losses, pairs})."""
  phi = np.asarray(phi, np.float32)
  r = np.asarray(r, np.float32)
  if phi.ndim != 3 or r.shape != phi.shape[:2]:
    raise ValueError(f"phi must be [n, k, D] and r [n, k]; got {phi.shape} and {r.shape}")
  rng = np.random.default_rng(config.seed)
  params = {"w": jnp.asarray(rng.normal(0, 1e-2, phi.shape[-1]), jnp.float32),
            "b": jnp.zeros((), jnp.float32)}
  pairs = None
  info: dict[str, Any] = {}
  if config.loss == "pref":
    pairs = tuple(jnp.asarray(a) for a in preference_pairs(r))
    info["pairs"] = int(pairs[0].shape[0])
    if info["pairs"] == 0:   # every prompt's samples tie: nothing to learn
      return jax.device_get(params), {**info, "losses": []}
  tx = optax.adam(config.learning_rate)
  opt = tx.init(params)
  chunk = int(config.chunk) if config.loss == "pg" and config.chunk else 0

  @jax.jit
  def step(params, opt, groups):
    value, grads = jax.value_and_grad(
        lambda p: objective(config.loss, p, phi, r, beta_train=config.beta_train, pairs=pairs,
                            groups=groups, l2=config.l2))(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  losses = []
  for _ in range(int(config.steps)):
    groups = jnp.asarray(pg_groups(r.shape[1], chunk, rng)) if chunk else None
    params, opt, value = step(params, opt, groups)
    losses.append(value)
  info["losses"] = [float(v) for v in jax.device_get(losses)]
  return jax.device_get(params), info
