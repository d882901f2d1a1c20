"""Gen-QOT: an autoregressive generative model of quantity-over-time arrivals.

An order of `a` units placed in week t arrives as `a * rho_j` in week t + j,
j = 0..L-1, with rho_j >= 0 and sum_j rho_j = yield <= 1 (Andaz et al., 2023).
Gen-QOT factorises the share vector over lags through the fraction of the
*remaining* (not yet received) quantity that arrives at lag j,

  r_0 = 1,   u_j = rho_j / r_j in [0, 1],   r_{j+1} = r_j (1 - u_j),

  p(rho | x) = prod_{j : r_j > 0} p(u_j | u_{<j}, x),

where x are the order's features (order size, season, vendor statistics).
Each conditional is a three-way mixture: nothing arrives (u = 0), everything
that remains arrives (u = 1), or a partial shipment u ~ Beta(alpha, beta).  A
GRU carries u_{<j}; its input at lag j is [x, onehot(j), u_{j-1}, 1 - r_j,
[anything received], weeks since last receipt / L].  Whatever remains after
lag L-1 never arrives, so yield < 1 is expressible.  Training is maximum
likelihood with teacher forcing (`GenQOT.__call__`); `GenQOT.sample` draws
share vectors ancestrally.

`PolicyNet` is the neural buying policy: an MLP from state features to a
non-negative order (in units of the product's demand scale).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

ZERO_TOL = 1e-6      # u below this counts as "nothing arrived".
FULL_TOL = 1e-4      # u above 1 - this counts as "all remaining arrived".
REMAIN_TOL = 1e-4    # r_j below this: the order is complete, lag j is not modelled.


class StepDist(NamedTuple):
  """p(u_j | ...): probabilities over {zero, full, partial} and a Beta."""
  logits: jax.Array   # (..., 3)
  alpha: jax.Array    # (...)
  beta: jax.Array     # (...)

  def log_prob(self, u: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(self.logits, axis=-1)
    is_zero = u < ZERO_TOL
    is_full = u > 1.0 - FULL_TOL
    uc = jnp.clip(u, FULL_TOL, 1.0 - FULL_TOL)
    log_beta = ((self.alpha - 1) * jnp.log(uc) + (self.beta - 1) * jnp.log1p(-uc)
                + gammaln(self.alpha + self.beta) - gammaln(self.alpha)
                - gammaln(self.beta))
    return jnp.where(is_zero, logp[..., 0],
                     jnp.where(is_full, logp[..., 1], logp[..., 2] + log_beta))

  def sample(self, key: jax.Array) -> jax.Array:
    k_cat, k_beta = jax.random.split(key)
    cat = jax.random.categorical(k_cat, self.logits, axis=-1)
    part = jax.random.beta(k_beta, self.alpha, self.beta)
    part = jnp.clip(part, FULL_TOL, 1.0 - FULL_TOL)
    return jnp.where(cat == 0, 0.0, jnp.where(cat == 1, 1.0, part))

  def mean(self) -> jax.Array:
    p = jax.nn.softmax(self.logits, axis=-1)
    return p[..., 1] + p[..., 2] * self.alpha / (self.alpha + self.beta)


def shares_to_fractions(rho: jax.Array):
  """rho (..., L) -> (u, remaining, mask): u_j = rho_j / r_j, mask = r_j > tol."""
  cum_before = jnp.cumsum(rho, axis=-1) - rho
  remaining = jnp.clip(1.0 - cum_before, 0.0, 1.0)
  mask = remaining > REMAIN_TOL
  u = jnp.where(mask, rho / jnp.where(mask, remaining, 1.0), 0.0)
  return jnp.clip(u, 0.0, 1.0), remaining, mask


class GenQOT(nn.Module):
  """Autoregressive model of arrival shares rho (L,) given order features x."""
  num_lags: int
  hidden: int = 64
  min_concentration: float = 0.1

  def setup(self):
    self.encoder = nn.Sequential([nn.Dense(self.hidden), nn.gelu,
                                  nn.Dense(self.hidden), jnp.tanh])
    self.cell = nn.GRUCell(features=self.hidden)
    self.head = nn.Sequential([nn.Dense(self.hidden), nn.gelu, nn.Dense(5)])

  def _step(self, h, x, j, prev_u, remaining, since_last):
    lag = jnp.broadcast_to(jax.nn.one_hot(j, self.num_lags),
                           x.shape[:-1] + (self.num_lags,))
    got_any = (remaining < 1.0 - ZERO_TOL).astype(x.dtype)
    inp = jnp.concatenate(
        [x, lag, prev_u[..., None], (1.0 - remaining)[..., None],
         got_any[..., None], (since_last / self.num_lags)[..., None]], axis=-1)
    h, out = self.cell(h, inp)
    out = self.head(jnp.concatenate([out, x], axis=-1))
    conc = jax.nn.softplus(out[..., 3:5]) + self.min_concentration
    return h, StepDist(out[..., :3], conc[..., 0], conc[..., 1])

  def _unroll(self, x, next_u_fn):
    """Runs the lags; next_u_fn(j, dist) gives u_j (data or a sample)."""
    batch = x.shape[:-1]
    h = self.encoder(x)
    prev_u = jnp.zeros(batch, x.dtype)
    remaining = jnp.ones(batch, x.dtype)
    since_last = jnp.zeros(batch, x.dtype)
    outs = []
    for j in range(self.num_lags):
      h, dist = self._step(h, x, j, prev_u, remaining, since_last)
      u = next_u_fn(j, dist)
      outs.append((dist, u, remaining))
      arrived = u > ZERO_TOL
      since_last = jnp.where(arrived, 0.0, since_last + 1.0)
      remaining = remaining * (1.0 - u)
      prev_u = u
    return outs

  def __call__(self, x: jax.Array, rho: jax.Array) -> jax.Array:
    """Log-likelihood log p(rho | x) per order, teacher forced. x (..., C), rho (..., L)."""
    u, _, mask = shares_to_fractions(rho)
    outs = self._unroll(x, lambda j, dist: u[..., j])
    logp = jnp.stack([d.log_prob(uj) for d, uj, _ in outs], axis=-1)
    return jnp.sum(jnp.where(mask, logp, 0.0), axis=-1)

  def sample(self, x: jax.Array, key: jax.Array) -> jax.Array:
    """Draws rho (..., L) ~ p(. | x)."""
    keys = jax.random.split(key, self.num_lags)
    outs = self._unroll(x, lambda j, dist: dist.sample(keys[j]))
    return jnp.stack([r * u for _, u, r in outs], axis=-1)

  def step_dists(self, x: jax.Array, rho: jax.Array) -> list[StepDist]:
    """The conditionals p(u_j | u_<j, x) along a given rho (for inspection)."""
    u, _, _ = shares_to_fractions(rho)
    return [d for d, _, _ in self._unroll(x, lambda j, dist: u[..., j])]


class PolicyNet(nn.Module):
  """MLP policy: features -> order / scale = softplus(f(features) + bias0)."""
  hidden: Sequence[int] = (64, 64)
  init_bias: float = 0.0

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    h = features
    for width in self.hidden:
      h = nn.gelu(nn.Dense(width)(h))
    out = nn.Dense(1, kernel_init=nn.initializers.zeros,
                   bias_init=nn.initializers.constant(self.init_bias))(h)
    return jax.nn.softplus(out[..., 0])
