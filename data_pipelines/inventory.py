"""Synthetic inventory-control traces and ground-truth quantity-over-time arrivals.

Everything a periodic-review inventory backtest replays, for `N` products over
`T` weeks, following the exogenous decision process of Madeka et al. (2022) and
Andaz et al. (2023, "Gen-QOT"):

* demand `D[i, t]`: seasonal (yearly sine), promotions lift demand when the
  price is discounted, Gamma noise with a per-product coefficient of variation;
* price `p`, unit purchase cost `c`, holding cost `h` (per unit held at the end
  of a week), and a noisy multi-week demand forecast for the policy;
* vendor constraints: minimum order quantity (MOQ) and batch (case-pack) size;
* a vendor profile per product that drives the ground-truth *quantity over
  time* (QOT) arrival process: an order `a` placed in week `t` arrives as
  `a * rho[t, j]` in week `t + j`, `j = 0..L-1`, with shares `rho >= 0`,
  `sum_j rho[t, j] = yield <= 1`.  The process has late first shipments,
  holiday congestion, split (partial) shipments whose probability grows with
  the order size relative to the vendor's capacity, and short shipments
  (yield < 1), see `true_arrival_shares`.

Arrays are numpy for the traces; the arrival process is written in JAX so the
simulator can draw order-dependent arrivals inside `lax.scan`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

WEEKS_PER_YEAR = 52
# Weeks of year with holiday congestion at the ports (longer lead times).
PEAK_WEEKS = (42, 52)


class VendorProfile(NamedTuple):
  """Ground-truth arrival process parameters, one entry per product (N,)."""
  base_lead: np.ndarray    # weeks until the first shipment when on time.
  late_prob: np.ndarray    # P(one more week late), geometric lateness.
  split_logit: np.ndarray  # log-odds of a second shipment for a = capacity.
  short_logit: np.ndarray  # log-odds of a short shipment for a = capacity.
  yield_a: np.ndarray      # Kumaraswamy(a, b) fill rate of a short shipment.
  yield_b: np.ndarray
  capacity: np.ndarray     # order size (units) around which splits start.


class Products(NamedTuple):
  """Static per-product data (N,)."""
  scale: np.ndarray        # base weekly demand level (units).
  cv: np.ndarray           # coefficient of variation of weekly demand.
  base_price: np.ndarray
  moq: np.ndarray          # minimum order quantity (units), multiple of batch.
  batch: np.ndarray        # batch / case-pack size (units).
  vendor: VendorProfile
  vendor_features: np.ndarray  # (N, V) noisy, observable vendor statistics.


class Traces(NamedTuple):
  """Exogenous weekly traces, (N, T) unless noted."""
  demand: np.ndarray
  mean_demand: np.ndarray
  price: np.ndarray
  cost: np.ndarray
  holding: np.ndarray
  forecast: np.ndarray     # (N, T, H): forecast of mean demand for t..t+H-1.
  week_of_year: np.ndarray  # (T,) int.


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def make_products(rng: np.random.Generator, num_products: int) -> Products:
  """Draws product and vendor characteristics."""
  n = num_products
  scale = np.exp(rng.normal(np.log(20.0), 0.8, n))
  cv = rng.uniform(0.25, 0.7, n)
  base_price = np.exp(rng.normal(np.log(20.0), 0.5, n))
  batch = np.maximum(1.0, np.round(scale * rng.uniform(0.05, 0.4, n)))
  moq = batch * np.maximum(1.0, np.round(scale * rng.uniform(0.3, 1.5, n) / batch))
  vendor = VendorProfile(
      base_lead=rng.integers(1, 5, n).astype(np.float64),
      late_prob=rng.uniform(0.05, 0.5, n),
      split_logit=rng.normal(-0.5, 1.0, n),
      short_logit=rng.normal(-1.0, 1.0, n),
      yield_a=rng.uniform(2.0, 6.0, n),
      yield_b=rng.uniform(1.0, 3.0, n),
      capacity=scale * rng.uniform(1.5, 4.0, n),
  )
  vendor_features = observable_vendor_features(rng, vendor, scale)
  return Products(scale=scale, cv=cv, base_price=base_price, moq=moq,
                  batch=batch, vendor=vendor, vendor_features=vendor_features)


def observable_vendor_features(rng: np.random.Generator, vendor: VendorProfile,
                               scale: np.ndarray, noise: float = 0.1) -> np.ndarray:
  """Noisy vendor statistics a buyer would know (a stand-in for a vendor id).

  Columns: base lead / 4, late prob, split logit / 2, short logit / 2, mean
  fill rate of short shipments, log(capacity / scale), each with Gaussian noise.
  """
  cols = [vendor.base_lead / 4.0, vendor.late_prob, vendor.split_logit / 2.0,
          vendor.short_logit / 2.0, kumaraswamy_mean(vendor.yield_a, vendor.yield_b),
          np.log(vendor.capacity / scale)]
  feats = np.stack(cols, axis=-1)
  return feats + noise * rng.normal(size=feats.shape)


def make_traces(rng: np.random.Generator, products: Products, num_weeks: int, *,
                horizon: int = 10, start_week: int = 0,
                holding_rate: tuple[float, float] = (0.01, 0.05),
                margin: tuple[float, float] = (0.45, 0.75),
                promo_prob: float = 0.08, forecast_noise: float = 0.1) -> Traces:
  """Draws the exogenous traces for `num_weeks` weeks.

  mean demand  mu[i,t] = scale_i * (1 + amp_i sin(2 pi (t + phase_i) / 52))
                         * (1 + trend_i t / 52) * (p_base / p[i,t])^elasticity_i
  demand       D[i,t] ~ Gamma(shape = 1 / cv_i^2, scale = mu[i,t] cv_i^2)
  cost c_i = margin_i p_base_i, holding h_i = rate_i c_i per unit-week,
  forecast[i,t,k] = mu[i,t+k] exp(sigma_k z - sigma_k^2 / 2), sigma_k grows with k.
  """
  n = products.scale.shape[0]
  t_all = np.arange(num_weeks + horizon)
  amp = rng.uniform(0.0, 0.6, n)[:, None]
  phase = rng.uniform(0, WEEKS_PER_YEAR, n)[:, None]
  trend = rng.normal(0.0, 0.1, n)[:, None]
  season = 1.0 + amp * np.sin(2 * np.pi * (t_all[None] + start_week + phase) / WEEKS_PER_YEAR)
  growth = np.maximum(0.2, 1.0 + trend * t_all[None] / WEEKS_PER_YEAR)
  promo = rng.random((n, t_all.size)) < promo_prob
  discount = np.where(promo, rng.uniform(0.1, 0.3, (n, t_all.size)), 0.0)
  price_all = products.base_price[:, None] * (1.0 - discount)
  elasticity = rng.uniform(1.0, 3.0, n)[:, None]
  mu_all = products.scale[:, None] * season * growth * (1.0 - discount) ** (-elasticity)
  shape = 1.0 / products.cv[:, None] ** 2
  demand = rng.gamma(shape, mu_all[:, :num_weeks] / shape)
  cost = np.broadcast_to((products.base_price * rng.uniform(*margin, n))[:, None],
                         (n, num_weeks)).copy()
  holding = np.broadcast_to((cost[:, 0] * rng.uniform(*holding_rate, n))[:, None],
                            (n, num_weeks)).copy()
  sig = forecast_noise * (1.0 + 0.1 * np.arange(horizon))
  idx = np.arange(num_weeks)[:, None] + np.arange(horizon)[None]
  z = rng.normal(size=(n, num_weeks, horizon))
  forecast = mu_all[:, idx] * np.exp(sig * z - 0.5 * sig**2)
  week = (np.arange(num_weeks) + start_week) % WEEKS_PER_YEAR
  f32 = lambda x: np.asarray(x, np.float32)
  return Traces(demand=f32(demand), mean_demand=f32(mu_all[:, :num_weeks]),
                price=f32(price_all[:, :num_weeks]), cost=f32(cost),
                holding=f32(holding), forecast=f32(forecast), week_of_year=week)


# ----------------------------------------------------------------------------
# Ground-truth quantity-over-time arrival process (JAX, one order at a time).
# ----------------------------------------------------------------------------


def _geometric(u, cont_prob):
  """Failures before the first success, P(k) = (1 - q) q^k, q = cont_prob, by
  inversion of a uniform u."""
  return jnp.floor(jnp.log(u) / jnp.log(jnp.clip(cont_prob, 1e-6, 1 - 1e-6)))


def _kumaraswamy(u, a, b):
  """Kumaraswamy(a, b) on (0, 1) by inversion: x = (1 - (1 - u)^(1/b))^(1/a)."""
  return (1.0 - (1.0 - u) ** (1.0 / b)) ** (1.0 / a)


def kumaraswamy_mean(a, b):
  """E[x] = b B(1 + 1/a, b) for Kumaraswamy(a, b)."""
  return b * special.beta(1.0 + 1.0 / np.asarray(a), np.asarray(b))


def true_arrival_shares(key: jax.Array, order: jax.Array, vendor: VendorProfile,
                        week_of_year: jax.Array, num_lags: int) -> jax.Array:
  """Draws the arrival shares rho[0..L-1] of one order (vmap for many).

  With x = log(order / capacity):
    first lag  l1 = base_lead + Geom(late_prob) + congestion (weeks 42-51:
               +1 w.p. 0.7, +1 more w.p. 0.35);
    shipments  2nd w.p. sigmoid(split_logit + 1.5 x), 3rd (given 2nd) w.p.
               sigmoid(split_logit - 1 + 1.5 x), gaps 1 + Geom(0.4) weeks;
    shares     Dirichlet(2, 2, 2) over the shipments that happen (Gamma(2)
               draws as sums of two exponentials);
    yield      y = 1, or y ~ Kumaraswamy(yield_a, yield_b) w.p.
               sigmoid(short_logit + x);
    rho_j      = y * sum_k share_k [lag_k = j], lags clipped to L - 1.
  All randomness comes from one vector of uniforms (inverse-CDF draws), which
  keeps the vmapped sampler cheap.  Returns float32 (num_lags,), rho >= 0,
  sum(rho) = y.
  """
  u = jax.random.uniform(key, (15,), minval=1e-7, maxval=1.0 - 1e-7)
  x = jnp.log(jnp.maximum(order, 1e-3) / vendor.capacity)
  peak = (week_of_year >= PEAK_WEEKS[0]) & (week_of_year < PEAK_WEEKS[1])
  congestion = peak * ((u[0] < 0.7).astype(jnp.float32) + (u[1] < 0.35).astype(jnp.float32))
  first = vendor.base_lead + _geometric(u[2], vendor.late_prob) + congestion
  second = u[3] < jax.nn.sigmoid(vendor.split_logit + 1.5 * x)
  third = second & (u[4] < jax.nn.sigmoid(vendor.split_logit - 1.0 + 1.5 * x))
  gap2 = 1.0 + _geometric(u[5], 0.4)
  gap3 = 1.0 + _geometric(u[6], 0.4)
  lags = jnp.stack([first, first + gap2, first + gap2 + gap3])
  lags = jnp.clip(lags, 0, num_lags - 1).astype(jnp.int32)
  active = jnp.stack([jnp.ones_like(second), second, third]).astype(jnp.float32)
  g = -(jnp.log(u[7:10]) + jnp.log(u[10:13])) * active
  shares = g / jnp.sum(g)
  short = u[13] < jax.nn.sigmoid(vendor.short_logit + x)
  y = jnp.where(short, _kumaraswamy(u[14], vendor.yield_a, vendor.yield_b), 1.0)
  rho = jnp.sum(shares[:, None] * jax.nn.one_hot(lags, num_lags), axis=0)
  return (y * rho).astype(jnp.float32)


def first_receipt_lag(rho: np.ndarray, tol: float = 1e-6) -> np.ndarray:
  """Vendor lead time as a lead-time-only system sees it: lag of first receipt."""
  rho = np.asarray(rho)
  received = rho > tol
  return np.where(received.any(-1), received.argmax(-1), rho.shape[-1] - 1)


def vendor_as_jax(vendor: VendorProfile) -> VendorProfile:
  return VendorProfile(*(jnp.asarray(v, jnp.float32) for v in vendor))
