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
condition is `policies.newsvendor_fractile(..., horizon=T)` (derivation there).

The step is written for one product and `jax.vmap`-ed over products inside a
`lax.scan` over weeks, so the whole backtest is one XLA computation that is
differentiable in the policy parameters (rho is treated as exogenous:
gradients do not flow through the arrival sampler).

The policies (base stock, newsvendor, the neural policy) are in
`experiments/inventory/policies.py`; the buyer's history and the arrival-model
scores in `history.py` and `arrival_eval.py` next to this file.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import inventory as inv_data


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


def genqot_arrivals(module, params) -> ArrivalFn:
  """Arrivals drawn from a trained Gen-QOT model (`models.genqot.GenQOT` and
  its parameters, the contract's `params`), conditioned on the order."""
  def fn(key, order, x, s):
    feats = arrival_features(jax.lax.stop_gradient(order), x, s)
    return module.apply({"params": params}, feats, key, method=module.sample)
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
  anything `policy_fn` closes over.  `key` is one PRNG key (week t's keys
  are split from fold_in(key, t)) or one key per product, (N, 2): product
  i's week-t key is then fold_in(key_i, t), so a product's draws do not
  depend on which other products are simulated with it.
  """
  n, t = exog.demand.shape
  if state is None:
    if num_lags is None:
      num_lags = static.lead_time_probs.shape[-1]
    state = init_state(n, num_lags)
  step = jax.vmap(_step(policy_fn, arrival_fn, constrain, charge_on_arrival))
  exog_tm = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), exog)
  per_product = jnp.ndim(key) == 2
  if per_product and key.shape[0] != n:
    raise ValueError(f"{key.shape[0]} keys for {n} products")

  def body(carry, inp):
    x, i = inp
    if per_product:
      keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, i)
    else:
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
