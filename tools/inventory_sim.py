"""Differentiable, vectorised backtest simulator for periodic-review inventory.

The exogenous decision process (Madeka et al., 2022) with quantity-over-time
(QOT) arrivals (Andaz et al., 2023).  Per product and week t:

  1. the policy sees the state (on-hand inventory I_t, the open quantity of
     each order placed in the last L-1 weeks, the week's exogenous data) and
     proposes an order a_t; vendor constraints turn it into
     a~_t = post(a_t) (MOQ, batch rounding; straight-through gradient);
  2. the order's arrival shares rho_{t, 0..L-1} are drawn (replayed, from the
     true process, from Gen-QOT, or one-hot at a lead time);
  3. arrivals A_t = sum_j a~_{t-j} rho_{t-j, j};
  4. lost sales: S_t = min(D_t, I_t + A_t), I_{t+1} = I_t + A_t - S_t;
  5. reward R_t = p_t S_t - c_t A_t - h_t I_{t+1}
     (purchase cost is paid on receipt, `charge_on_arrival=True`; or on the
     order, c_t a~_t), return sum_t gamma^t R_t.

With lag 0 (rho = e_0) and i.i.d. demand the base-stock level that maximises
the return satisfies, for an infinite horizon, the critical fractile

  F(S*) = (p - c) / (p + h - gamma c),

because the order a_t = S - I_t = S_{t-1} (last week's sales) re-buys what
was sold, so holding a unit one more week costs h minus the discounted saving
gamma c of not re-buying it.  For a finite horizon T with I_0 = 0 the exact
condition is `newsvendor_fractile(..., horizon=T)` (derivation there).

The step is written for one product and `jax.vmap`-ed over products inside a
`lax.scan` over weeks, so the whole backtest is one XLA computation that is
differentiable in the policy parameters (rho is treated as exogenous:
gradients do not flow through the arrival sampler).
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import inventory as inv_data
from models import genqot


# ----------------------------------------------------------------------------
# Data structures.
# ----------------------------------------------------------------------------


class Exog(NamedTuple):
  """Exogenous time-varying inputs, (N, T, ...) (one product: (T, ...))."""
  demand: jax.Array
  price: jax.Array
  cost: jax.Array
  holding: jax.Array
  forecast: jax.Array        # (N, T, H)
  week: jax.Array            # (N, T) int32 week of year.
  rho: Optional[jax.Array] = None  # (N, T, L) replayed shares, if any.


class Static(NamedTuple):
  """Static per-product inputs, (N, ...)."""
  scale: jax.Array
  cv: jax.Array
  moq: jax.Array
  batch: jax.Array
  vendor: inv_data.VendorProfile      # ground-truth process (no policy here reads it).
  vendor_features: jax.Array          # (N, V) observable vendor statistics.
  lead_time_probs: jax.Array          # (N, L) empirical first-receipt lag pmf.
  mean_lead_time: jax.Array           # (N,) mean first-receipt lag.
  base_price: jax.Array


class SimState(NamedTuple):
  """Per-product state at the start of week t.

  sched[k, j]: units of the order placed in week t-1-k that will arrive in
  week t+j (known to the simulator, not to the policy); ordered[k] and
  received[k]: that order's quantity and what has arrived of it so far.
  """
  inventory: jax.Array   # (N,)
  sched: jax.Array       # (N, L, L)
  ordered: jax.Array     # (N, L)
  received: jax.Array    # (N, L)


class Obs(NamedTuple):
  """What a policy sees for one product at the start of a week."""
  inventory: jax.Array   # ()
  open_orders: jax.Array  # (L-1,) ordered - received, orders aged 1..L-1.
  x: Exog                # this week's exogenous slice (rho is not shown).
  s: Static


class StepOut(NamedTuple):
  order_raw: jax.Array
  order: jax.Array
  arrivals: jax.Array
  sales: jax.Array
  lost_sales: jax.Array
  inventory: jax.Array   # end of week, I_{t+1}
  revenue: jax.Array
  purchase_cost: jax.Array
  holding_cost: jax.Array
  reward: jax.Array
  rho: jax.Array         # (L,) shares drawn for this week's order.


PolicyFn = Callable[[Obs], jax.Array]
ArrivalFn = Callable[[jax.Array, jax.Array, Exog, Static], jax.Array]


def init_state(num_products: int, num_lags: int, inventory=None) -> SimState:
  inv = jnp.zeros(num_products) if inventory is None else jnp.asarray(inventory)
  return SimState(inventory=jnp.broadcast_to(inv, (num_products,)) + 0.0,
                  sched=jnp.zeros((num_products, num_lags, num_lags)),
                  ordered=jnp.zeros((num_products, num_lags)),
                  received=jnp.zeros((num_products, num_lags)))


def exog_from_traces(tr: inv_data.Traces, start: int = 0, stop: Optional[int] = None,
                     rho: Optional[np.ndarray] = None) -> Exog:
  sl = slice(start, stop)
  n = tr.demand.shape[0]
  week = np.broadcast_to(tr.week_of_year[None, sl], (n, tr.week_of_year[sl].size))
  return Exog(demand=jnp.asarray(tr.demand[:, sl]), price=jnp.asarray(tr.price[:, sl]),
              cost=jnp.asarray(tr.cost[:, sl]), holding=jnp.asarray(tr.holding[:, sl]),
              forecast=jnp.asarray(tr.forecast[:, sl]),
              week=jnp.asarray(week, jnp.int32),
              rho=None if rho is None else jnp.asarray(rho[:, sl]))


def make_static(products: inv_data.Products, lead_time_probs: np.ndarray) -> Static:
  lt = np.asarray(lead_time_probs, np.float32)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return Static(scale=f32(products.scale), cv=f32(products.cv), moq=f32(products.moq),
                batch=f32(products.batch), vendor=inv_data.vendor_as_jax(products.vendor),
                vendor_features=f32(products.vendor_features), lead_time_probs=f32(lt),
                mean_lead_time=f32(lt @ np.arange(lt.shape[-1])),
                base_price=f32(products.base_price))


def take_products(tree, idx):
  """Selects products (leading axis) from an Exog / Static / SimState."""
  return jax.tree_util.tree_map(lambda a: a[idx], tree)


# ----------------------------------------------------------------------------
# Vendor constraints.
# ----------------------------------------------------------------------------


def vendor_postprocess(order: jax.Array, moq: jax.Array, batch: jax.Array,
                       threshold: float = 0.5) -> jax.Array:
  """Rounds an order to what the vendor accepts.

  a~ = 0                                         if a < threshold * MOQ,
  a~ = batch * max(round(a / batch), ceil(MOQ / batch))   otherwise,
  so a~ is 0 or >= MOQ, and a multiple of the batch size.
  """
  order = jnp.maximum(order, 0.0)
  n = jnp.maximum(jnp.round(order / batch), jnp.ceil(moq / batch - 1e-6))
  return jnp.where(order >= threshold * moq, n * batch, 0.0)


def straight_through(order: jax.Array, processed: jax.Array) -> jax.Array:
  """Forward value `processed`, gradient d processed / d order := 1.

  The post-processor is piecewise constant (zero gradient almost everywhere),
  so training uses the straight-through estimator: the policy is credited as
  if its raw order had been placed, a + stop_gradient(post(a) - a).
  """
  return order + jax.lax.stop_gradient(processed - order)


# ----------------------------------------------------------------------------
# Arrival models: (key, order, x_t, s) -> rho (L,) for one product.
# ----------------------------------------------------------------------------


def replay_arrivals(key, order, x, s):
  del key, order, s
  return x.rho


def true_arrivals(num_lags: int) -> ArrivalFn:
  def fn(key, order, x, s):
    return inv_data.true_arrival_shares(key, order, s.vendor, x.week, num_lags)
  return fn


def lead_time_arrivals(num_lags: int) -> ArrivalFn:
  """Lead-time-only model: the whole order arrives at a lag drawn from the
  product's empirical first-receipt lag distribution (yield 1)."""
  def fn(key, order, x, s):
    del order, x
    lag = jax.random.categorical(key, jnp.log(s.lead_time_probs + 1e-12))
    return jax.nn.one_hot(lag, num_lags)
  return fn


def fixed_lag_arrivals(lag: int, num_lags: int) -> ArrivalFn:
  def fn(key, order, x, s):
    del key, order, x, s
    return jax.nn.one_hot(lag, num_lags)
  return fn


def switch_arrivals(fns, index) -> ArrivalFn:
  """Picks one of several arrival models by a (traced, unbatched) index, so
  one compiled simulator serves them all (`lax.switch` stays a branch under
  the product vmap because the index is not batched)."""
  def fn(key, order, x, s):
    return jax.lax.switch(index, list(fns), key, order, x, s)
  return fn


def arrival_features(order: jax.Array, x: Exog, s: Static) -> jax.Array:
  """Gen-QOT conditioning features for one order (one product, one week)."""
  rel = jnp.log(jnp.maximum(order, 1e-3) / s.scale)
  ang = 2 * jnp.pi * x.week / inv_data.WEEKS_PER_YEAR
  return jnp.concatenate([
      jnp.stack([rel, 0.25 * rel**2, jnp.sin(ang), jnp.cos(ang), jnp.sin(2 * ang),
                 jnp.cos(2 * ang), jnp.sin(4 * ang), jnp.cos(4 * ang)]),
      s.vendor_features], axis=-1).astype(jnp.float32)


def genqot_arrivals(model, params) -> ArrivalFn:
  """Arrivals drawn from a trained Gen-QOT model, conditioned on the order."""
  def fn(key, order, x, s):
    feats = arrival_features(jax.lax.stop_gradient(order), x, s)
    return model.apply(params, feats, key, method=model.sample)
  return fn


# ----------------------------------------------------------------------------
# Policies.
# ----------------------------------------------------------------------------


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
  def fn(obs):
    return obs.s.scale * net.apply(params, policy_features(obs, gamma))
  return fn


# ----------------------------------------------------------------------------
# The simulator.
# ----------------------------------------------------------------------------


def _step(policy_fn: PolicyFn, arrival_fn: ArrivalFn, constrain: bool,
          charge_on_arrival: bool):
  """One week for one product (vmapped by `simulate`)."""

  def step(state: SimState, x: Exog, s: Static, key: jax.Array):
    # Orders aged L have had all their lags; what is left of them never comes.
    open_orders = (state.ordered - state.received)[:-1]
    obs = Obs(inventory=state.inventory, open_orders=open_orders,
              x=x._replace(rho=None), s=s)
    raw = policy_fn(obs)
    if constrain:
      order = straight_through(raw, vendor_postprocess(raw, s.moq, s.batch))
    else:
      order = raw
    rho = jax.lax.stop_gradient(arrival_fn(key, jax.lax.stop_gradient(order), x, s))
    sched = jnp.concatenate([(order * rho)[None], state.sched[:-1]], axis=0)
    ordered = jnp.concatenate([order[None], state.ordered[:-1]])
    per_order = sched[:, 0]
    received = jnp.concatenate([jnp.zeros((1,)), state.received[:-1]]) + per_order
    arrivals = jnp.sum(per_order)
    available = state.inventory + arrivals
    sales = jnp.minimum(x.demand, available)
    end_inv = available - sales
    revenue = x.price * sales
    purchase = x.cost * (arrivals if charge_on_arrival else order)
    holding = x.holding * end_inv
    sched = jnp.concatenate([sched[:, 1:], jnp.zeros_like(sched[:, :1])], axis=1)
    new_state = SimState(inventory=end_inv, sched=sched, ordered=ordered, received=received)
    out = StepOut(order_raw=raw, order=order, arrivals=arrivals, sales=sales,
                  lost_sales=x.demand - sales, inventory=end_inv, revenue=revenue,
                  purchase_cost=purchase, holding_cost=holding,
                  reward=revenue - purchase - holding, rho=rho)
    return new_state, out

  return step


def simulate(policy_fn: PolicyFn, arrival_fn: ArrivalFn, exog: Exog, static: Static,
             key: jax.Array, state: Optional[SimState] = None, *,
             num_lags: Optional[int] = None, constrain: bool = True,
             charge_on_arrival: bool = True, unroll: int = 1):
  """Runs the backtest for all products; returns (final state, StepOut (N, T)).

  `exog` is product-major (N, T, ...); `static` (N, ...).  Differentiable in
  anything `policy_fn` closes over.
  """
  n, t = exog.demand.shape
  if state is None:
    if num_lags is None:
      num_lags = static.lead_time_probs.shape[-1]
    state = init_state(n, num_lags)
  step = jax.vmap(_step(policy_fn, arrival_fn, constrain, charge_on_arrival))
  exog_tm = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), exog)

  def body(carry, inp):
    x, i = inp
    keys = jax.random.split(jax.random.fold_in(key, i), n)
    return step(carry, x, static, keys)

  final, outs = jax.lax.scan(body, state, (exog_tm, jnp.arange(t)), unroll=unroll)
  outs = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), outs)
  return final, outs


def discounted_return(rewards: jax.Array, gamma: float) -> jax.Array:
  """sum_t gamma^t R_t along the last axis."""
  t = rewards.shape[-1]
  return jnp.sum(rewards * gamma ** jnp.arange(t, dtype=rewards.dtype), axis=-1)


def summarize(outs: StepOut, gamma: float, scale=None) -> dict:
  """Per-run figures (numpy): discounted return per product (mean, standard
  error over products) and per product-week means of the flows."""
  o = {k: np.asarray(v, np.float64) for k, v in outs._asdict().items() if k != "rho"}
  t = o["reward"].shape[-1]
  ret = np.sum(o["reward"] * gamma ** np.arange(t), axis=-1)
  res = {
      "return_mean": float(ret.mean()),
      "return_se": float(ret.std() / math.sqrt(ret.size)),
      "reward_per_week": float(o["reward"].mean()),
      "revenue_per_week": float(o["revenue"].mean()),
      "sales_per_week": float(o["sales"].mean()),
      "lost_sales_per_week": float(o["lost_sales"].mean()),
      "fill_rate": float(o["sales"].sum() / (o["sales"] + o["lost_sales"]).sum()),
      "inventory_per_week": float(o["inventory"].mean()),
      "order_per_week": float(o["order"].mean()),
      "arrivals_per_week": float(o["arrivals"].mean()),
      "order_frequency": float((o["order"] > 0).mean()),
  }
  if scale is not None:
    res["inventory_weeks_of_cover"] = float(
        np.mean(o["inventory"].mean(-1) / np.asarray(scale)))
  return res


# ----------------------------------------------------------------------------
# Histories and arrival-model metrics.
# ----------------------------------------------------------------------------


def collect_history(exog: Exog, static: Static, key: jax.Array, *, gamma: float,
                    num_lags: int, multipliers: jax.Array, noise: float = 0.3,
                    state: Optional[SimState] = None):
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
  base = newsvendor_policy(gamma)

  def policy(obs):
    factor = obs.x.forecast[-1]
    obs = obs._replace(x=obs.x._replace(forecast=obs.x.forecast[:-1]))
    return factor * base(obs)

  if state is None:
    state = init_state(n, num_lags)
  final, outs = simulate(policy, true_arrivals(num_lags), exog_aug, static, k_sim, state)
  feats = jax.vmap(jax.vmap(arrival_features, in_axes=(0, 0, None)),
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


# ----------------------------------------------------------------------------
# Benchmark: python -m tools.inventory_sim
# ----------------------------------------------------------------------------


def _benchmark(num_products: int = 10_000, num_weeks: int = 104, num_lags: int = 10,
               repeats: int = 3, with_genqot: bool = False) -> dict:
  rng = np.random.default_rng(0)
  products = inv_data.make_products(rng, num_products)
  traces = inv_data.make_traces(rng, products, num_weeks, horizon=num_lags)
  lt = np.full((num_products, num_lags), 1.0 / num_lags, np.float32)
  static = make_static(products, lt)
  exog = exog_from_traces(traces)
  gamma = 0.99
  key = jax.random.PRNGKey(0)
  results = {}

  @jax.jit
  def run_true(mult, key):
    _, outs = simulate(newsvendor_policy(gamma, mult), true_arrivals(num_lags),
                       exog, static, key)
    return jnp.mean(discounted_return(outs.reward, gamma)), outs.rho

  @jax.jit
  def run_replay(mult, rho, key):
    _, outs = simulate(newsvendor_policy(gamma, mult), replay_arrivals,
                       exog._replace(rho=rho), static, key)
    return jnp.mean(discounted_return(outs.reward, gamma))

  @jax.jit
  def grad_replay(mult, rho, key):
    return jax.value_and_grad(lambda m: run_replay(m, rho, key))(mult)

  _, rho = run_true(1.0, key)
  rho = jax.block_until_ready(rho)
  cases = [("true_process", lambda: run_true(1.0, key)[0]),
           ("replay", lambda: run_replay(1.0, rho, key)),
           ("replay_value_and_grad", lambda: grad_replay(1.0, rho, key)[1])]
  if with_genqot:
    model = genqot.GenQOT(num_lags=num_lags, hidden=32)
    feats = arrival_features(jnp.float32(1.0), jax.tree_util.tree_map(lambda a: a[0, 0], exog),
                             jax.tree_util.tree_map(lambda a: a[0], static))
    gq_params = jax.jit(model.init)(key, feats[None], jnp.zeros((1, num_lags)))

    @jax.jit
    def run_genqot(mult, key):
      _, outs = simulate(newsvendor_policy(gamma, mult), genqot_arrivals(model, gq_params),
                         exog, static, key)
      return jnp.mean(discounted_return(outs.reward, gamma))

    cases.append(("genqot_sampler_h32", lambda: run_genqot(1.0, key)))
  for name, fn in cases:
    jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      best = min(best, time.perf_counter() - t0)
    results[name] = {"seconds": best, "rate": num_products * num_weeks / best}
  return results


if __name__ == "__main__":
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--products", type=int, default=10_000)
  parser.add_argument("--weeks", type=int, default=104)
  parser.add_argument("--lags", type=int, default=10)
  parser.add_argument("--with_genqot", action="store_true",
                      help="also time arrivals drawn by an (untrained) Gen-QOT in the loop")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{args.products} products x {args.weeks} weeks, L = {args.lags}")
  for name, r in _benchmark(args.products, args.weeks, args.lags,
                            with_genqot=args.with_genqot).items():
    print(f"{name:>22}: {r['seconds']:.3f} s  ->  {r['rate']:,.0f} product-weeks/s")
