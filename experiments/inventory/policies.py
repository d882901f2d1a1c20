"""Buying policies for the QOT inventory simulator (`simulator.py`).

A policy maps what the buyer sees for one product at the start of week t
(`simulator.Obs`: on-hand inventory I_t, the open quantity of each order of
the last L-1 weeks, the week's exogenous data, static product data) to an
order a_t >= 0 before vendor rounding:

* `base_stock_policy(S)`: a_t = max(S - (I_t + open_t), 0);
* `newsvendor_policy`: base stock up to the critical-fractile quantile of
  demand over the mean first-receipt lead time + 1 week (the production
  baseline; ignores split shipments and yield);
* `neural_policy`: a_t = scale * PolicyNet(features_t) (`models.genqot.PolicyNet`),
  trained through the simulator (`policy_objective.py`);
* `mixed_policy`: the neural policy or a newsvendor by a traced switch, so
  one compiled backtest serves all of them.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from data_pipelines import inventory as inv_data
from experiments.inventory.simulator import Obs, PolicyFn


def inventory_position(obs: Obs) -> jax.Array:
  return obs.inventory + jnp.sum(obs.open_orders)


def base_stock_policy(level) -> PolicyFn:
  """Order up to a fixed level S: a = max(S - inventory position, 0)."""
  def fn(obs):
    return jnp.maximum(level - inventory_position(obs), 0.0)
  return fn


def newsvendor_fractile(price, cost, holding, gamma, horizon: Optional[int] = None):
  """Critical fractile F(S*) of the lag-0 lost-sales base-stock problem.

  Return of base stock S with I_0 = 0 over weeks 0..T-1 (a_0 = S,
  a_t = S_{t-1} for t >= 1, I_{t+1} = S - S_t):
    G(S) = -c S + sum_{t<T} g^t [(p + h) S_t - h S] - c g sum_{t<T-1} g^t S_t.
  With dS_t/dS = [D_t > S], E[.] = 1 - F(S), setting dG/dS = 0 gives
    1 - F(S*) = (c + h G_T) / ((p + h) G_T - c g G_{T-1}),  G_n = sum_{t<n} g^t,
  and for T -> inf:  F(S*) = (p - c) / (p + h - g c).
  """
  if horizon is None:
    return (price - cost) / (price + holding - gamma * cost)
  g_t = sum(gamma**t for t in range(horizon))
  g_tm1 = sum(gamma**t for t in range(horizon - 1))
  return 1.0 - (cost + holding * g_t) / ((price + holding) * g_t - cost * gamma * g_tm1)


def normal_ppf(q):
  return jnp.sqrt(2.0) * jax.scipy.special.erfinv(2.0 * q - 1.0)


def newsvendor_policy(gamma: float, multiplier=1.0, lead_time_shift=0.0) -> PolicyFn:
  """Production-style base-stock baseline from a lead-time model.

  Order up to S_t = m * (sum_k w_k f_{t+k} + z sqrt(sum_k w_k (cv f_{t+k})^2)),
  w_k = clip(l + 1 - k, 0, 1) covers the product's mean first-receipt lead
  time l (+ shift) plus the review week, z = Phi^{-1}(F*) with the
  critical fractile F* = (p - c) / (p + h - gamma c).  Ignores split
  shipments and yield: the open quantity counts fully in the position.
  """
  def fn(obs):
    x, s = obs.x, obs.s
    horizon = x.forecast.shape[-1]
    lt = s.mean_lead_time + lead_time_shift
    w = jnp.clip(lt + 1.0 - jnp.arange(horizon), 0.0, 1.0)
    mean = jnp.sum(w * x.forecast)
    std = jnp.sqrt(jnp.sum(w * (s.cv * x.forecast) ** 2))
    frac = jnp.clip(newsvendor_fractile(x.price, x.cost, x.holding, gamma), 0.01, 0.995)
    level = multiplier * (mean + normal_ppf(frac) * std)
    return jnp.maximum(level - inventory_position(obs), 0.0)
  return fn


def policy_features(obs: Obs, gamma: float) -> jax.Array:
  """State features for the neural policy, quantities in units of the scale."""
  x, s = obs.x, obs.s
  sc = s.scale
  ang = 2 * jnp.pi * x.week / inv_data.WEEKS_PER_YEAR
  frac = newsvendor_fractile(x.price, x.cost, x.holding, gamma)
  nv = newsvendor_policy(gamma)(obs) / sc
  return jnp.concatenate([
      jnp.stack([obs.inventory / sc, jnp.sum(obs.open_orders) / sc,
                 inventory_position(obs) / sc, nv, x.price / s.base_price,
                 x.cost / x.price, 10.0 * x.holding / x.price, frac, s.cv,
                 s.moq / sc, s.batch / sc, s.mean_lead_time / 4.0,
                 jnp.sin(ang), jnp.cos(ang)]),
      obs.open_orders / sc, x.forecast / sc, jnp.cumsum(x.forecast) / sc,
      s.lead_time_probs, s.vendor_features], axis=-1)


def neural_policy(net, params, gamma: float) -> PolicyFn:
  """order = scale * net(features): `net` a `models.genqot.PolicyNet`,
  `params` its parameters (the contract's `params`)."""
  def fn(obs):
    return obs.s.scale * net.apply({"params": params}, policy_features(obs, gamma))
  return fn


def mixed_policy(net, gamma: float, spec) -> PolicyFn:
  """spec = {"net": params, "mult": m, "use_net": 0/1}: the neural policy with
  `params` or the newsvendor with multiplier m (one compiled simulator for
  both; `mult` and `use_net` may be traced)."""
  nv = newsvendor_policy(gamma, spec["mult"])
  nn_pol = neural_policy(net, spec["net"], gamma)
  return lambda obs: jnp.where(spec["use_net"] > 0, nn_pol(obs), nv(obs))
