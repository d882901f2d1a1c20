"""Gen-QOT: an autoregressive generative model of quantity-over-time arrivals.

An order of `a` units placed in week t arrives as `a * rho_j` in week t + j,
j = 0..L-1, with rho_j >= 0 and sum_j rho_j = yield <= 1 (Andaz et al., 2023).
Gen-QOT factorises the share vector over lags through the fraction of the
*remaining* (not yet received) quantity that arrives at lag j,

  r_0 = 1,   u_j = rho_j / r_j in [0, 1],   r_{j+1} = r_j (1 - u_j),

  p(rho | x) = prod_{j : r_j > 0} p(u_j | u_{<j}, x),

where x are the order's features (order size, season, vendor statistics).
Each conditional is a three-way mixture: nothing arrives (u = 0), everything
that remains arrives (u = 1), or a partial shipment u ~ Kumaraswamy(a, b).  A
GRU carries u_{<j}; its input at lag j is [x, onehot(j), u_{j-1}, 1 - r_j,
[anything received], weeks since last receipt / L].  Whatever remains after
lag L-1 never arrives, so yield < 1 is expressible.  Training is maximum
likelihood with teacher forcing (`GenQOT.__call__`); `GenQOT.sample` draws
share vectors ancestrally.

Model contract (`models.contract`; registered as `model.name=genqot`): a
batch {x (B, C), rho (B, L)} of B orders gives the sums
  loss = sum_i -log p(rho_i | x_i) / L,   count = B,   nll = sum_i -log p(rho_i | x_i),
so the framework minimises the mean NLL per order divided by the number of
lags L (nats per lag) and also reports the mean NLL per order.

`PolicyNet` is the neural buying policy: an MLP from state features to a
non-negative order (in units of the product's demand scale). It has no loss
of its own: its objective is the profit simulated with it, which needs the
inventory simulator and data (`experiments/inventory/policy_objective.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from models import contract
from models import registry

ZERO_TOL = 1e-6      # u below this counts as "nothing arrived".
FULL_TOL = 1e-4      # u above 1 - this counts as "all remaining arrived".
REMAIN_TOL = 1e-4    # r_j below this: the order is complete, lag j is not modelled.


class StepDist(NamedTuple):
  """p(u_j | ...): probabilities over {zero, full, partial} and a Kumaraswamy.

  The partial fraction u ~ Kumaraswamy(a, b), density a b u^(a-1) (1 - u^a)^(b-1)
  on (0, 1): Beta-like in shape, but with a closed-form inverse CDF, so the
  simulator can draw it cheaply inside its vmapped scan.
  """
  logits: jax.Array   # (..., 3)
  a: jax.Array        # (...)
  b: jax.Array        # (...)

  def log_prob(self, u: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(self.logits, axis=-1)
    is_zero = u < ZERO_TOL
    is_full = u > 1.0 - FULL_TOL
    uc = jnp.clip(u, FULL_TOL, 1.0 - FULL_TOL)
    log_ua = self.a * jnp.log(uc)
    log_k = (jnp.log(self.a) + jnp.log(self.b) + (self.a - 1.0) * jnp.log(uc)
             + (self.b - 1.0) * jnp.log1p(-jnp.exp(log_ua)))
    return jnp.where(is_zero, logp[..., 0],
                     jnp.where(is_full, logp[..., 1], logp[..., 2] + log_k))

  def sample(self, key: jax.Array) -> jax.Array:
    v = jax.random.uniform(key, self.a.shape + (2,), minval=1e-6, maxval=1.0 - 1e-6)
    return self.sample_from_uniforms(v)

  def sample_from_uniforms(self, v: jax.Array) -> jax.Array:
    """Inverse-CDF draw from two uniforms v (..., 2): the component from
    v[..., 0] against the cumulative probabilities, the Kumaraswamy fraction
    u = (1 - (1 - v[..., 1])^(1/b))^(1/a)."""
    p = jax.nn.softmax(self.logits, axis=-1)
    cat = (v[..., 0] > p[..., 0]).astype(jnp.int32) + (v[..., 0] > p[..., 0] + p[..., 1])
    part = (-jnp.expm1(jnp.log1p(-v[..., 1]) / self.b)) ** (1.0 / self.a)
    part = jnp.clip(part, FULL_TOL, 1.0 - FULL_TOL)
    return jnp.where(cat == 0, 0.0, jnp.where(cat == 1, 1.0, part))

  def mean(self) -> jax.Array:
    """E[u] = P(full) + P(partial) b B(1 + 1/a, b)."""
    p = jax.nn.softmax(self.logits, axis=-1)
    log_beta = gammaln(1.0 + 1.0 / self.a) + gammaln(self.b) - gammaln(1.0 + 1.0 / self.a + self.b)
    return p[..., 1] + p[..., 2] * self.b * jnp.exp(log_beta)


def shares_to_fractions(rho: jax.Array):
  """rho (..., L) -> (u, remaining, mask): u_j = rho_j / r_j, mask = r_j > tol."""
  cum_before = jnp.cumsum(rho, axis=-1) - rho
  remaining = jnp.clip(1.0 - cum_before, 0.0, 1.0)
  mask = remaining > REMAIN_TOL
  u = jnp.where(mask, rho / jnp.where(mask, remaining, 1.0), 0.0)
  return jnp.clip(u, 0.0, 1.0), remaining, mask


class _Carry(NamedTuple):
  h: jax.Array
  prev_u: jax.Array
  remaining: jax.Array
  since_last: jax.Array


class _LagStep(nn.Module):
  """One lag of the decoder, scanned over lags with shared parameters.

  `inp` is (j, u_j) for teacher forcing, or (j, v_j) when `sampling`, in
  which case u_j is drawn from the predicted conditional with the uniforms
  v_j (..., 2).
  """
  num_lags: int
  hidden: int
  min_concentration: float
  sampling: bool = False

  @nn.compact
  def __call__(self, carry: _Carry, x: jax.Array, inp):
    j, u_or_key = inp
    lag = jnp.broadcast_to(jax.nn.one_hot(j, self.num_lags), x.shape[:-1] + (self.num_lags,))
    got_any = (carry.remaining < 1.0 - ZERO_TOL).astype(x.dtype)
    feats = jnp.concatenate(
        [x, lag, carry.prev_u[..., None], (1.0 - carry.remaining)[..., None],
         got_any[..., None], (carry.since_last / self.num_lags)[..., None]], axis=-1)
    h, out = nn.GRUCell(features=self.hidden, name="cell")(carry.h, feats)
    out = nn.Dense(self.hidden, name="head_0")(jnp.concatenate([out, x], axis=-1))
    out = nn.Dense(5, name="head_1")(nn.gelu(out))
    conc = jax.nn.softplus(out[..., 3:5]) + self.min_concentration
    dist = StepDist(out[..., :3], conc[..., 0], conc[..., 1])
    u = dist.sample_from_uniforms(u_or_key) if self.sampling else u_or_key
    arrived = u > ZERO_TOL
    new = _Carry(h=h, prev_u=u, remaining=carry.remaining * (1.0 - u),
                 since_last=jnp.where(arrived, 0.0, carry.since_last + 1.0))
    out = carry.remaining * u if self.sampling else dist.log_prob(u)
    return new, out


class GenQOT(nn.Module):
  """Autoregressive model of arrival shares rho (L,) given order features x."""
  num_lags: int
  hidden: int = 64
  min_concentration: float = 0.2

  def setup(self):
    self.encoder = nn.Sequential([nn.Dense(self.hidden), nn.gelu,
                                  nn.Dense(self.hidden), jnp.tanh])
    self.decoder = nn.scan(
        _LagStep, variable_broadcast="params", split_rngs={"params": False},
        in_axes=(nn.broadcast, 0), out_axes=0, length=self.num_lags)(
            num_lags=self.num_lags, hidden=self.hidden,
            min_concentration=self.min_concentration)

  def _carry0(self, x):
    batch = x.shape[:-1]
    z = jnp.zeros(batch, x.dtype)
    return _Carry(h=self.encoder(x), prev_u=z, remaining=jnp.ones(batch, x.dtype),
                  since_last=z)

  def step_log_probs(self, x: jax.Array, rho: jax.Array) -> jax.Array:
    """log p(u_j | u_<j, x) for every lag (unmasked), (..., L)."""
    u, _, _ = shares_to_fractions(rho)
    inp = (jnp.arange(self.num_lags), jnp.moveaxis(u, -1, 0))
    _, logp = self.decoder(self._carry0(x), x, inp)
    return jnp.moveaxis(logp, 0, -1)

  def __call__(self, x: jax.Array, rho: jax.Array) -> jax.Array:
    """Log-likelihood log p(rho | x) per order, teacher forced. x (..., C), rho (..., L)."""
    _, _, mask = shares_to_fractions(rho)
    return jnp.sum(jnp.where(mask, self.step_log_probs(x, rho), 0.0), axis=-1)

  def loss(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Contract sums over the B orders: NLL / L (loss), B (count), NLL (nll)."""
    nll = -jnp.sum(self(batch["x"], batch["rho"]))
    count = jnp.asarray(batch["rho"].shape[0], jnp.float32)
    return {"loss": nll / self.num_lags, "count": count, "nll": nll}

  def sample(self, x: jax.Array, key: jax.Array) -> jax.Array:
    """Draws rho (..., L) ~ p(. | x) ancestrally."""
    # The same scanned decoder with sampling switched on, bound to the
    # teacher-forcing decoder's parameters.
    sampler = self.decoder.clone(parent=None, sampling=True)
    # One draw of all uniforms up front: cheaper than a key per lag.
    v = jax.random.uniform(key, (self.num_lags,) + x.shape[:-1] + (2,),
                           minval=1e-6, maxval=1.0 - 1e-6)
    inp = (jnp.arange(self.num_lags), v)
    _, rho = sampler.apply({"params": self.decoder.variables["params"]},
                           self._carry0(x), x, inp)
    return jnp.moveaxis(rho, 0, -1)


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


@dataclasses.dataclass(frozen=True)
class GenQOTConfig:
  num_lags: int = 10
  hidden: int = 64
  min_concentration: float = 0.2


@registry.register("genqot", GenQOTConfig)
def build(cfg: GenQOTConfig) -> contract.FlaxModel:
  return contract.FlaxModel(GenQOT(**dataclasses.asdict(cfg)))
