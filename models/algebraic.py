"""One-hidden-layer bias-free networks of Morwani et al. (ICLR 2024).

Two-input tasks (modular addition, group composition), width m, |X| inputs,
C classes. Neuron i has u_i, v_i in R^{|X|} and w_i in R^C and computes

    phi_i(a, b) = sigma(u_i[a] + v_i[b]) * w_i,      f = sum_i phi_i,

i.e. sigma(u_i . e_a + v_i . e_b) w_i on the one-hot input [e_a, e_b].
sigma(z) = z^2 (the paper's quadratic net, homogeneous of degree nu = 3 in
theta_i = (u_i, v_i, w_i)) or ReLU (nu = 2).

Sparse parity, x in {+-1}^n, two output logits: phi_i(x) = sigma(u_i . x) w_i
with sigma(z) = z^k (nu = k + 1) or ReLU (nu = 2).

Parameters are plain dicts of arrays with the neuron axis first:
two-input {"u": (m, |X|), "v": (m, |X|), "w": (m, C)}, parity
{"u": (m, n), "w": (m, 2)}. `LOGICAL_AXES` names the axes for sharding rules.
The models are frozen dataclasses, so they can be static jit arguments.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import jax
import jax.numpy as jnp

Params = Dict[str, jax.Array]

LOGICAL_AXES = {
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


@dataclasses.dataclass(frozen=True)
class TwoInputNet:
  """f(a, b) = sum_i sigma(u_i[a] + v_i[b]) w_i (quadratic or ReLU)."""
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

  def init(self, key: jax.Array, scale: float = 1.0) -> Params:
    """Gaussian init with per-neuron norm ~ scale (entries N(0, s^2/dim))."""
    ku, kv, kw = jax.random.split(key, 3)
    dim = 2 * self.vocab_size + self.num_classes
    std = scale / jnp.sqrt(dim)
    return {
        "u": std * jax.random.normal(ku, (self.width, self.vocab_size)),
        "v": std * jax.random.normal(kv, (self.width, self.vocab_size)),
        "w": std * jax.random.normal(kw, (self.width, self.num_classes)),
    }

  def hidden(self, params: Params, inputs: jax.Array) -> jax.Array:
    """Pre-activations u_i[a] + v_i[b], (N, m).

    inputs: int (N, 2) pairs, or float (N, 2|X|) one-hot [e_a, e_b].
    """
    if jnp.issubdtype(inputs.dtype, jnp.integer):
      return params["u"].T[inputs[:, 0]] + params["v"].T[inputs[:, 1]]
    n = self.vocab_size
    return inputs[:, :n] @ params["u"].T + inputs[:, n:] @ params["v"].T

  def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
    act = _activation(self.activation, self.degree)
    return act(self.hidden(params, inputs)) @ params["w"]


@dataclasses.dataclass(frozen=True)
class ParityNet:
  """f(x) = sum_i sigma(u_i . x) w_i with sigma(z) = z^k or ReLU."""
  input_dim: int
  width: int
  degree: int = 2
  activation: str = "power"
  num_classes: int = 2

  @property
  def homogeneity(self) -> int:
    """nu with f(c theta) = c^nu f(theta)."""
    return _homogeneity(self.activation, self.degree)

  def init(self, key: jax.Array, scale: float = 1.0) -> Params:
    ku, kw = jax.random.split(key)
    std = scale / jnp.sqrt(self.input_dim + self.num_classes)
    return {
        "u": std * jax.random.normal(ku, (self.width, self.input_dim)),
        "w": std * jax.random.normal(kw, (self.width, self.num_classes)),
    }

  def hidden(self, params: Params, inputs: jax.Array) -> jax.Array:
    return inputs @ params["u"].T

  def apply(self, params: Params, inputs: jax.Array) -> jax.Array:
    act = _activation(self.activation, self.degree)
    return act(self.hidden(params, inputs)) @ params["w"]


def neuron_norms(params: Params) -> jax.Array:
  """||theta_i||_2 over all of neuron i's weights, (m,)."""
  sq = sum(jnp.sum(jnp.square(p), axis=1) for p in params.values())
  return jnp.sqrt(sq)


def l2nu_norm(params: Params, nu: float) -> jax.Array:
  """||theta||_{2,nu} = (sum_i ||theta_i||_2^nu)^(1/nu)."""
  return jnp.sum(neuron_norms(params) ** nu) ** (1.0 / nu)


def l2nu_penalty(params: Params, nu: float) -> jax.Array:
  """||theta||_{2,nu}^nu = sum_i ||theta_i||_2^nu (smooth for nu >= 2)."""
  sq = sum(jnp.sum(jnp.square(p), axis=1) for p in params.values())
  return jnp.sum(sq ** (nu / 2.0))
