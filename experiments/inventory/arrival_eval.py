"""Scores of arrival models on held-out orders, and the models compared.

Each model draws S share vectors rho^(s) (L,) per held-out order; they are
scored on the cumulative receipts C_j = sum_{k<=j} rho_k (the fraction of the
order received by lag j) against the realised ones: CRPS per lag, quantile
(pinball) loss, and calibration of the randomised PIT. `sample_arrival_models`
draws from Gen-QOT, the lead-time-only model (whole order at a lag from the
product's first-receipt histogram), the unconditional empirical model
(bootstrapped training share vectors) and the true process (oracle).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import inventory as inv_data
from experiments.inventory import simulator as sim


def crps_from_samples(samples: jax.Array, y: jax.Array) -> jax.Array:
  """CRPS(F, y) = E|X - y| - E|X - X'| / 2, X ~ samples on axis 0."""
  s = jnp.sort(samples, axis=0)
  m = s.shape[0]
  term1 = jnp.mean(jnp.abs(s - y[None]), axis=0)
  # E|X - X'| for the empirical distribution via sorted samples:
  # (2 / m^2) sum_i (2 i - m + 1) s_(i)   (i = 0..m-1).
  w = (2.0 * jnp.arange(m) - m + 1.0).reshape((m,) + (1,) * (s.ndim - 1))
  term2 = 2.0 * jnp.sum(w * s, axis=0) / m**2
  return term1 - 0.5 * term2


def quantile_loss(pred: jax.Array, y: jax.Array, q) -> jax.Array:
  """Pinball loss rho_q(y - pred) = max(q (y - pred), (q - 1)(y - pred))."""
  diff = y - pred
  return jnp.maximum(q * diff, (q - 1.0) * diff)


def cumulative_receipt_metrics(samples: jax.Array, rho: jax.Array,
                               quantiles=(0.1, 0.5, 0.9)) -> dict:
  """Scores sampled share vectors (S, B, L) against the truth (B, L) on the
  cumulative receipts C_j = sum_{k<=j} rho_k (fraction of the order).

  Returns CRPS per lag (L,), mean quantile loss per level, and calibration:
  the fraction of randomised PIT values F(y-) + V (F(y) - F(y-)), V ~ U(0, 1),
  at or below each level (equal to the level for a calibrated model; the
  randomisation handles the atoms at 0 and 1 of cumulative receipts).
  """
  levels = np.linspace(0.05, 0.95, 19)
  crps, ql, cal = _receipt_metric_arrays(samples, rho, tuple(quantiles), tuple(levels))
  out = {"crps_per_lag": np.asarray(crps), "crps": float(np.mean(crps))}
  for i, q in enumerate(quantiles):
    out[f"ql_{q:g}"] = float(ql[i])
  out["calibration_levels"] = levels
  out["calibration_observed"] = np.asarray(cal)
  return out


@functools.partial(jax.jit, static_argnums=(2, 3))
def _receipt_metric_arrays(samples, rho, quantiles, levels):
  cs = jnp.cumsum(samples, axis=-1)
  cy = jnp.cumsum(rho, axis=-1)
  crps = jnp.mean(crps_from_samples(cs, cy), axis=0)
  qs = jnp.asarray(quantiles)
  pred = jnp.quantile(cs, qs, axis=0)  # (Q, B, L)
  ql = jnp.stack([jnp.mean(quantile_loss(pred[i], cy, q)) for i, q in enumerate(quantiles)])
  cal = pit_calibration(cs, cy, jnp.asarray(levels))
  return crps, ql, cal


def pit_calibration(samples: jax.Array, y: jax.Array, levels: jax.Array,
                    tol: float = 1e-6) -> jax.Array:
  """P(randomised PIT <= level), averaged over all entries of y.

  With F- = P(X < y) and F+ = P(X <= y) from the samples (axis 0), the PIT is
  uniform on [F-, F+], so P(PIT <= q) = clip((q - F-) / (F+ - F-), 0, 1).
  """
  f_lo = jnp.mean(samples < y[None] - tol, axis=0)
  f_hi = jnp.mean(samples <= y[None] + tol, axis=0)
  q = levels.reshape((-1,) + (1,) * y.ndim)
  width = f_hi - f_lo
  frac = jnp.where(width > 0, jnp.clip((q - f_lo) / jnp.maximum(width, 1e-12), 0.0, 1.0),
                   (f_lo <= q).astype(jnp.float32))
  return jnp.mean(frac.reshape(levels.shape[0], -1), axis=-1)


def sample_arrival_models(module, params, train: dict, test: dict, static: sim.Static,
                          key: jax.Array, *, num_samples: int, num_lags: int,
                          jit: Callable = jax.jit) -> dict:
  """Samples (S, B, L) from each arrival model for the held-out orders."""
  b = test["x"].shape[0]
  keys = jax.random.split(key, 4)
  x = jnp.asarray(test["x"])
  samples = {}
  samples["genqot"] = jit(jax.vmap(
      lambda k: module.apply({"params": params}, x, k, method=module.sample)))(
          jax.random.split(keys[0], num_samples))
  lt = np.asarray(static.lead_time_probs)[test["product"]]
  lags = jax.random.categorical(keys[1], jnp.log(jnp.asarray(lt) + 1e-12), axis=-1,
                                shape=(num_samples, b))
  samples["lead_time"] = jax.nn.one_hot(lags, num_lags)
  pick = jax.random.randint(keys[2], (num_samples, b), 0, train["rho"].shape[0])
  samples["empirical"] = jnp.asarray(train["rho"])[pick]
  vendor = sim.take_products(static.vendor, jnp.asarray(test["product"]))
  draw = jax.vmap(inv_data.true_arrival_shares, in_axes=(0, 0, 0, 0, None))
  samples["oracle"] = jit(jax.vmap(lambda k: draw(
      jax.random.split(k, b), jnp.asarray(test["order"]), vendor, jnp.asarray(test["week"]),
      num_lags)))(jax.random.split(keys[3], num_samples))
  return samples


def score_arrival_models(samples: dict, rho: np.ndarray):
  """Per model: `cumulative_receipt_metrics` plus the predicted mean yield,
  split-shipment rate and first-receipt lag; and the same figures of the truth."""
  rho = jnp.asarray(rho)
  metrics = {}
  for name, smp in samples.items():
    m = cumulative_receipt_metrics(smp, rho)
    m["mean_yield_pred"] = float(jnp.mean(jnp.sum(smp, -1)))
    m["split_rate_pred"] = float(jnp.mean(jnp.sum(smp > 1e-6, -1) > 1))
    m["first_lag_pred"] = float(np.mean(inv_data.first_receipt_lag(np.asarray(smp))))
    metrics[name] = m
  truth = dict(mean_yield=float(jnp.mean(jnp.sum(rho, -1))),
               split_rate=float(jnp.mean(jnp.sum(rho > 1e-6, -1) > 1)),
               first_lag=float(np.mean(inv_data.first_receipt_lag(np.asarray(rho)))))
  return metrics, truth
