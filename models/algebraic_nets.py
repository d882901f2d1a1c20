"""One-hidden-layer bias-free networks of Morwani et al. (ICLR 2024).

Two-input tasks (modular addition, group composition), width m, |X| inputs,
C classes. Neuron i has u_i, v_i in R^{|X|} and w_i in R^C and computes

    phi_i(a, b) = sigma(u_i[a] + v_i[b]) * w_i,      f = sum_i phi_i,

i.e. sigma(u_i . e_a + v_i . e_b) w_i on the one-hot input [e_a, e_b].
sigma(z) = z^2 (the paper's quadratic net, homogeneous of degree nu = 3 in
theta_i = (u_i, v_i, w_i)) or ReLU (nu = 2).

Sparse parity, x in {+-1}^n, two output logits: phi_i(x) = sigma(u_i . x) w_i
with sigma(z) = z^k (nu = k + 1) or ReLU (nu = 2).

The activation names "quadratic" and "power" both mean sigma(z) = z^degree
(degree 2 for the two-input nets); nu = degree + 1 follows the activation
the forward pass applies.

Parameters are plain dicts of arrays with the neuron axis first:
two-input {"u": (m, |X|), "v": (m, |X|), "w": (m, C)}, parity
{"u": (m, n), "w": (m, 2)}; `logical_axes` names their axes ("neurons",
"inputs", "classes") for the config's sharding rules.

Objective (`models.contract`; registered as `two_input_net` and `parity_net`):

    L_t(theta) = mean_{(x,y) in B} CE(f(theta; x), y) + lambda_t ||theta||_{2,nu}^nu,
    ||theta||_{2,nu}^nu = sum_i ||theta_i||_2^nu,

or log L_t(theta) with `log_objective` (log is monotone: the same
minimisers, but gradients stay O(1) once L ~ exp(-margin)). lambda_t is held
at lambda_start for lambda_hold * schedule_steps steps, then decays
geometrically to lambda_end at lambda_decay_end * schedule_steps and stays
there (`penalty_weight`); the nets set `uses_step`, so the train step passes
t as batch["step"]. Small lambda drives the normalised margin to its maximum
as lambda -> 0. `loss` returns |B| L_t as the "loss" sum (the framework divides
by the count), with the CE, accuracy, penalty and lambda sums beside it.

The models are frozen dataclasses (hashable: static jit arguments) and are
their own registry configs.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from models import registry

Params = Dict[str, jax.Array]

_AXES = {
    "u": ("neurons", "inputs"),
    "v": ("neurons", "inputs"),
    "w": ("neurons", "classes"),
}

POLYNOMIAL = ("quadratic", "power")  # both mean sigma(z) = z^degree
ACTIVATIONS = POLYNOMIAL + ("relu",)


def _activation(name: str, degree: int):
  if name in POLYNOMIAL:
    return lambda z: z ** degree
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"unknown activation {name!r}; choose from {ACTIVATIONS}")


def _homogeneity(name: str, degree: int) -> int:
  """nu with f(c theta) = c^nu f(theta) for c > 0, from the activation that
  `_activation` applies: z^degree gives degree + 1 (the output layer adds
  one), ReLU gives 2."""
  if name in POLYNOMIAL:
    return degree + 1
  if name == "relu":
    return 2
  raise ValueError(f"unknown activation {name!r}; choose from {ACTIVATIONS}")


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


def margins(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example f[y] - max_{y' != y} f[y'], (N,)."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  correct = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  masked = jnp.where(jnp.arange(logits.shape[1])[None] == labels[:, None],
                     -jnp.inf, logits)
  return correct - jnp.max(masked, axis=1)


def neuron_norms(params: Params) -> jax.Array:
  """||theta_i||_2 over all of neuron i's weights, (m,)."""
  sq = sum(jnp.sum(jnp.square(p), axis=1) for p in params.values())
  return jnp.sqrt(sq)


def l2nu_norm(params: Params, nu: float) -> jax.Array:
  """||theta||_{2,nu} = (sum_i ||theta_i||_2^nu)^(1/nu)."""
  return jnp.sum(neuron_norms(params) ** nu) ** (1.0 / nu)


def l2nu_penalty(params: Params, nu: float) -> jax.Array:
  """||theta||_{2,nu}^nu = sum_i ||theta_i||_2^nu (smooth for nu >= 2)."""
  sq = sum(jnp.sum(jnp.square(jnp.asarray(p)), axis=1)
           for p in params.values())
  return jnp.sum(sq ** (nu / 2.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MarginObjective:
  """L_t = mean CE + lambda_t ||theta||_{2,nu}^nu (or its log), module doc.

  Mixed into both nets; every field is keyword-only.
  """
  init_scale: float = 1.0
  lambda_start: float = 1e-5
  lambda_end: float = 1e-30
  lambda_hold: float = 0.0        # fraction of schedule_steps at lambda_start
  lambda_decay_end: float = 0.8   # fraction of schedule_steps where lambda_end is reached
  schedule_steps: int = 20000     # the run's length (the config ties it to the trainer's)
  log_objective: bool = True

  uses_step = True  # class attribute, not a field: the step passes batch["step"]

  def penalty_weight(self, step) -> jax.Array:
    """lambda_t = lambda_start (lambda_end / lambda_start)^clip((t - hold) / (end - hold), 0, 1).

    hold = lambda_hold * schedule_steps, end = lambda_decay_end * schedule_steps.
    Works on traced steps (inside jit) and on numpy / Python scalars.
    """
    hold = self.lambda_hold * self.schedule_steps
    end = self.lambda_decay_end * self.schedule_steps
    xp = np if isinstance(step, (np.generic, np.ndarray, int, float)) else jnp
    frac = xp.clip((step - hold) / max(end - hold, 1), 0.0, 1.0)
    return self.lambda_start * (self.lambda_end / self.lambda_start) ** frac

  def logical_axes(self, params: Params) -> Dict[str, tuple]:
    """("neurons", "inputs") for u and v, ("neurons", "classes") for w."""
    return {k: _AXES[k] for k in params}

  def loss(self, params: Params, batch: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
    """Sums over the batch: |B| L_t as "loss", CE, accuracy (margin > 0),
    penalty ||theta||_{2,nu}^nu x |B|, lambda_t x |B|, and "count" = |B|.

    Without batch["step"] (evaluation outside the train step), lambda is the
    schedule's final value.
    """
    labels = batch["labels"]
    logits = self.apply(params, batch["inputs"])
    ce = cross_entropy(logits, labels)
    step = batch.get("step", self.schedule_steps)
    lam = jnp.asarray(self.penalty_weight(jnp.asarray(step)), jnp.float32)
    reg = l2nu_penalty(params, self.homogeneity)
    total = jnp.mean(ce) + lam * reg
    objective = jnp.log(total) if self.log_objective else total
    count = jnp.asarray(labels.shape[0], jnp.float32)
    return {
        "loss": count * objective,
        "count": count,
        "ce": jnp.sum(ce),
        "accuracy": jnp.sum((margins(logits, labels) > 0).astype(jnp.float32)),
        "penalty": count * reg,
        "lambda": count * lam,
    }


@dataclasses.dataclass(frozen=True)
class TwoInputNet(MarginObjective):
  """f(a, b) = sum_i sigma(u_i[a] + v_i[b]) w_i (quadratic or ReLU).

  Batches: {"inputs": int (N, 2) pairs or float (N, 2|X|) one-hot,
  "labels": int (N,)}.
  """
  vocab_size: int
  num_classes: int
  width: int
  activation: str = "quadratic"

  @property
  def degree(self) -> int:
    return 2

  @property
  def homogeneity(self) -> int:
    """nu with f(c theta) = c^nu f(theta)."""
    return _homogeneity(self.activation, self.degree)

  def init(self, rng: jax.Array, batch=None) -> Params:
    """Gaussian init with per-neuron norm ~ init_scale (entries N(0, s^2/dim)).

    `batch` (the contract's example batch) is not needed: the shapes come
    from the config.
    """
    del batch
    ku, kv, kw = jax.random.split(rng, 3)
    dim = 2 * self.vocab_size + self.num_classes
    std = self.init_scale / jnp.sqrt(dim)
    return {
        "u": std * jax.random.normal(ku, (self.width, self.vocab_size)),
        "v": std * jax.random.normal(kv, (self.width, self.vocab_size)),
        "w": std * jax.random.normal(kw, (self.width, self.num_classes)),
    }

  def hidden(self, params: Params, inputs: jax.Array) -> jax.Array:
    """Pre-activations u_i[a] + v_i[b], (N, m).

    inputs: int (N, 2) pairs, or float (N, 2|X|) one-hot [e_a, e_b].
    """
    inputs = jnp.asarray(inputs)
    if jnp.issubdtype(inputs.dtype, jnp.integer):
      return params["u"].T[inputs[:, 0]] + params["v"].T[inputs[:, 1]]
    n = self.vocab_size
    return inputs[:, :n] @ params["u"].T + inputs[:, n:] @ params["v"].T

  def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
    act = _activation(self.activation, self.degree)
    return act(self.hidden(params, inputs)) @ params["w"]


@dataclasses.dataclass(frozen=True)
class ParityNet(MarginObjective):
  """f(x) = sum_i sigma(u_i . x) w_i with sigma(z) = z^degree or ReLU.

  Batches: {"inputs": float (N, n) in {+-1}, "labels": int (N,)}.
  """
  input_dim: int
  width: int
  degree: int = 2
  activation: str = "power"
  num_classes: int = 2

  @property
  def homogeneity(self) -> int:
    """nu with f(c theta) = c^nu f(theta)."""
    return _homogeneity(self.activation, self.degree)

  def init(self, rng: jax.Array, batch=None) -> Params:
    """Gaussian init with per-neuron norm ~ init_scale; `batch` is not needed."""
    del batch
    ku, kw = jax.random.split(rng)
    std = self.init_scale / jnp.sqrt(self.input_dim + self.num_classes)
    return {
        "u": std * jax.random.normal(ku, (self.width, self.input_dim)),
        "w": std * jax.random.normal(kw, (self.width, self.num_classes)),
    }

  def hidden(self, params: Params, inputs: jax.Array) -> jax.Array:
    return jnp.asarray(inputs) @ params["u"].T

  def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
    act = _activation(self.activation, self.degree)
    return act(self.hidden(params, inputs)) @ params["w"]


def _check(model):
  _homogeneity(model.activation, model.degree)  # rejects unknown activations
  if model.schedule_steps < 1:
    raise ValueError(f"schedule_steps={model.schedule_steps} must be >= 1")
  return model


@registry.register("two_input_net", TwoInputNet)
def build_two_input_net(cfg: TwoInputNet) -> TwoInputNet:
  return _check(cfg)


@registry.register("parity_net", ParityNet)
def build_parity_net(cfg: ParityNet) -> ParityNet:
  return _check(cfg)
