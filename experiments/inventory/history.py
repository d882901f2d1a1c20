"""The buyer's history: orders, arrivals and the data both models learn from.

A noisy newsvendor buyer (`collect_history`) is replayed against the true
quantity-over-time arrival process on synthetic traces
(`data_pipelines/inventory.py`): each product has its own base-stock
multiplier m_i ~ U(0.8, 1.4) and each order lognormal noise, so order sizes
vary and Gen-QOT must learn how arrivals depend on them. The history weeks
train the arrival models and the policies; the following `test_weeks` are
held out for the backtest. `make_data` replays the history in chunks of
`test_weeks` weeks (one compiled program for every chunk) and keeps the
simulator state at each chunk start, so the backtest starts from the
historical state at the first held-out week.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import inventory as inv_data
from experiments.inventory import policies
from experiments.inventory import simulator as sim


def collect_history(exog: sim.Exog, static: sim.Static, key: jax.Array, *, gamma: float,
                    num_lags: int, multipliers: jax.Array, noise: float = 0.3,
                    state: Optional[sim.SimState] = None):
  """Replays a noisy newsvendor buyer against the true arrival process.

  Each product has its own base-stock multiplier (N,) and each order gets
  lognormal noise, so order sizes vary (Gen-QOT must learn the size
  dependence).  Returns (final state, outs, features (N, T, C)); the true
  shares are in `outs.rho`.
  """
  n = exog.demand.shape[0]
  k_noise, k_sim = jax.random.split(key)
  mult = jnp.asarray(multipliers)
  eps = jnp.exp(noise * jax.random.normal(k_noise, exog.demand.shape) - 0.5 * noise**2)
  # The per-product multiplier and per-week noise ride along as extra
  # "forecast" columns that only this policy reads.
  fc = exog.forecast
  aug = jnp.concatenate([fc, (mult[:, None] * eps)[..., None]], axis=-1)
  exog_aug = exog._replace(forecast=aug)
  base = policies.newsvendor_policy(gamma)

  def policy(obs):
    factor = obs.x.forecast[-1]
    obs = obs._replace(x=obs.x._replace(forecast=obs.x.forecast[:-1]))
    return factor * base(obs)

  if state is None:
    state = sim.init_state(n, num_lags)
  final, outs = sim.simulate(policy, sim.true_arrivals(num_lags), exog_aug, static, k_sim,
                             state)
  feats = jax.vmap(jax.vmap(sim.arrival_features, in_axes=(0, 0, None)),
                   in_axes=(0, 0, 0))(outs.order, exog, static)
  return final, outs, feats


def lead_time_table(orders: np.ndarray, rho: np.ndarray, num_lags: int,
                    prior_weight: float = 2.0) -> np.ndarray:
  """Per-product pmf of the first-receipt lag of past orders, (N, L).

  Laplace-style smoothing toward the pooled histogram with `prior_weight`
  pseudo-orders.
  """
  lags = inv_data.first_receipt_lag(rho)
  valid = (orders > 0) & (rho.sum(-1) > 1e-6)
  onehot = np.eye(num_lags)[lags] * valid[..., None]
  counts = onehot.sum(1)
  pooled = counts.sum(0) / max(counts.sum(), 1.0)
  table = (counts + prior_weight * pooled) / (counts.sum(-1, keepdims=True) + prior_weight)
  return table.astype(np.float32)


def prior_lead_time_table(products: inv_data.Products, num_lags: int) -> np.ndarray:
  """The buyer's belief before any history: base lead + 1 from vendor stats."""
  lag = np.clip(np.round(products.vendor_features[:, 0] * 4.0) + 1, 0, num_lags - 1)
  table = np.eye(num_lags)[lag.astype(int)] * 0.8 + 0.2 / num_lags
  return table.astype(np.float32)


def make_data(cfg, rng: np.random.Generator, key: jax.Array, jit: Callable = jax.jit) -> dict:
  """Traces and the noisy-newsvendor history (config sections `data`, `gamma`).

  Returns the products, the Static inputs with the lead-time table learnt
  from orders whose arrivals completed inside the history window, the
  exogenous inputs of the history, tuning (last history chunk) and held-out
  windows with the simulator states at their starts, and the history itself
  (StepOut (N, T)) with each order's Gen-QOT features.
  """
  d = cfg.data
  num_lags, chunk = d.num_lags, d.test_weeks
  if d.history_weeks % chunk:
    raise ValueError("data.history_weeks must be a multiple of data.test_weeks")
  products = inv_data.make_products(rng, d.num_products)
  traces = inv_data.make_traces(rng, products, d.history_weeks + d.test_weeks,
                                horizon=num_lags)
  static_prior = sim.make_static(products, prior_lead_time_table(products, num_lags))
  mult = jnp.asarray(rng.uniform(0.8, 1.4, d.num_products), jnp.float32)
  state = sim.init_state(d.num_products, num_lags, 2.0 * products.scale)
  hist_fn = jit(lambda ex, k, st: collect_history(
      ex, static_prior, k, gamma=cfg.gamma, num_lags=num_lags, multipliers=mult,
      noise=d.behaviour_noise, state=st))
  states, outs, feats = [], [], []
  for c, start in enumerate(range(0, d.history_weeks + d.test_weeks, chunk)):
    states.append(state)
    exog = sim.exog_from_traces(traces, start, start + chunk)
    state, o, f = hist_fn(exog, jax.random.fold_in(key, c), state)
    outs.append(o)
    feats.append(np.asarray(f))
  cat = lambda *a: np.concatenate([np.asarray(x) for x in a], axis=1)
  nh = d.history_weeks // chunk
  hist = jax.tree_util.tree_map(cat, *outs[:nh])
  hist_test = outs[nh]
  order, rho = np.asarray(hist.order), np.asarray(hist.rho)
  # Lead-time model from orders whose arrivals are complete within the window.
  complete = np.arange(d.history_weeks)[None] < d.history_weeks - num_lags
  lt_table = lead_time_table(np.where(complete, order, 0.0), rho, num_lags)
  static = sim.make_static(products, lt_table)
  return dict(products=products, traces=traces, static=static,
              exog_hist=sim.exog_from_traces(traces, 0, d.history_weeks),
              exog_test=sim.exog_from_traces(traces, d.history_weeks, None),
              # Last history chunk (tuning window) and the held-out window.
              exog_tune=sim.exog_from_traces(traces, d.history_weeks - chunk, d.history_weeks),
              state_tune=states[nh - 1], state_test=states[nh],
              hist=hist, feats=np.concatenate(feats[:nh], axis=1), hist_test=hist_test,
              feats_test=feats[nh], complete=complete)


def order_dataset(data: dict, eval_orders: int, rng: np.random.Generator):
  """Training orders (history weeks, arrivals complete) as {x, rho}, and up
  to `eval_orders` held-out orders (with product, week of year and size)."""
  order = np.asarray(data["hist"].order)
  mask = (order > 0) & data["complete"]
  train = dict(x=data["feats"][mask], rho=np.asarray(data["hist"].rho)[mask])
  order_t = np.asarray(data["hist_test"].order)
  prod, week = np.nonzero(order_t > 0)
  pick = rng.choice(prod.size, min(eval_orders, prod.size), replace=False)
  prod, week = prod[pick], week[pick]
  test = dict(x=data["feats_test"][prod, week], rho=np.asarray(data["hist_test"].rho)[prod, week],
              product=prod, week=np.asarray(data["exog_test"].week)[prod, week],
              order=order_t[prod, week])
  return train, test
