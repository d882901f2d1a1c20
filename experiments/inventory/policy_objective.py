"""The neural buying policy's objective through the simulator, as a model.

`SimulatedProfit` meets `models.contract` with `models.genqot.PolicyNet` as
its parameters and the simulator, the arrival process and the history as
static parts. A batch is R rows r = (product i_r, start week t_r, initial
inventory I_r, scenario seed s_r). Row r simulates product i_r over history
weeks t_r .. t_r + W - 1 from on-hand inventory I_r and an empty pipeline,
ordering a_t = scale_i PolicyNet_theta(features_t) (vendor rounding with a
straight-through gradient), with arrival shares drawn from the model's
arrival process (Gen-QOT, lead-time-only or the true process) by keys that
depend on s_r alone, and earns the normalised discounted profit

  G_r(theta) = sum_{t<W} gamma^t R_t / (p0_i scale_i),
  R_t = p_t S_t - c_t A_t - h_t I_{t+1}.

  loss(theta, batch) = -sum_r G_r(theta),   count = R,

so the framework's objective is minus the mean normalised return, and its
gradient is the pathwise derivative through inventory and the pipeline
(shares are exogenous to it: stop-gradient). Rows are independent, so M
micro-batches add up exactly to one batch of R rows.

`PolicyRows` yields such batches from the history weeks, deterministically
by position (resumable: get_state/set_state).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from experiments.inventory import policies
from experiments.inventory import simulator as sim


class SimulatedProfit:
  """loss(params, rows) = -sum_r G_r: PolicyNet params, simulated on `exog`."""

  def __init__(self, net, arrival_fn: sim.ArrivalFn, exog: sim.Exog, static: sim.Static, *,
               gamma: float, window: int, num_lags: int):
    t_hist = exog.demand.shape[1]
    if not 0 < window <= t_hist:
      raise ValueError(f"window of {window} weeks does not fit the {t_hist} history weeks")
    self.net, self.arrival_fn = net, arrival_fn
    self.exog, self.static = exog._replace(rho=None), static
    self.gamma, self.window, self.num_lags = float(gamma), int(window), int(num_lags)

  def _dummy_obs(self) -> sim.Obs:
    return sim.Obs(inventory=jnp.zeros(()), open_orders=jnp.zeros(self.num_lags - 1),
                   x=jax.tree_util.tree_map(lambda a: a[0, 0], self.exog),
                   s=jax.tree_util.tree_map(lambda a: a[0], self.static))

  def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Any:
    del batch
    feats = policies.policy_features(self._dummy_obs(), self.gamma)
    return self.net.init(rng, feats)["params"]

  def rows(self, batch: Mapping[str, jax.Array]):
    """Each row's exogenous window (R, W, ...), static data, start state, keys."""
    idx = jnp.asarray(batch["product"], jnp.int32)
    weeks = jnp.asarray(batch["start"], jnp.int32)[:, None] + jnp.arange(self.window)
    exog = jax.tree_util.tree_map(lambda a: a[idx[:, None], weeks], self.exog)
    static = sim.take_products(self.static, idx)
    state = sim.init_state(idx.shape[0], self.num_lags, batch["inventory"])
    keys = jax.vmap(jax.random.PRNGKey)(batch["seed"])
    return exog, static, state, keys

  def returns(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    """G_r for every row, (R,)."""
    exog, static, state, keys = self.rows(batch)
    _, outs = sim.simulate(policies.neural_policy(self.net, params, self.gamma),
                           self.arrival_fn, exog, static, keys, state)
    return sim.discounted_return(outs.reward, self.gamma) / (static.base_price * static.scale)

  def loss(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    ret = self.returns(params, batch)
    return {"loss": -jnp.sum(ret), "count": jnp.asarray(ret.shape[0], jnp.float32),
            "return": jnp.sum(ret)}


class PolicyRows:
  """Infinite, resumable stream of row batches for `SimulatedProfit`.

  Batch k is drawn from default_rng([seed, k]): R distinct products, each
  with a start week uniform on 0..T-W, an initial inventory scale_i U(0, 3)
  and a scenario seed. Host `shard_index` of `num_shards` takes its
  contiguous share of the R rows.
  """

  def __init__(self, scale: np.ndarray, history_weeks: int, window: int, rows: int, *,
               seed: int = 0, shard_index: int = 0, num_shards: int = 1):
    self.scale = np.asarray(scale, np.float64)
    n = self.scale.shape[0]
    if rows > n:
      raise ValueError(f"{rows} rows of distinct products from only {n} products")
    if rows % num_shards:
      raise ValueError(f"{rows} rows do not split over {num_shards} hosts")
    self.history_weeks, self.window, self.rows = int(history_weeks), int(window), int(rows)
    self.seed, self.shard_index, self.num_shards = int(seed), shard_index, num_shards
    self.step = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.step])
    self.step += 1
    r = self.rows
    idx = rng.choice(self.scale.shape[0], r, replace=False)
    batch = {"product": idx.astype(np.int32),
             "start": rng.integers(0, self.history_weeks - self.window + 1, r).astype(np.int32),
             "inventory": (self.scale[idx] * rng.uniform(0.0, 3.0, r)).astype(np.float32),
             "seed": rng.integers(0, 2**31 - 1, r).astype(np.uint32)}
    per = r // self.num_shards
    sl = slice(self.shard_index * per, (self.shard_index + 1) * per)
    return {k: v[sl] for k, v in batch.items()}

  def get_state(self) -> dict[str, int]:
    return {"step": self.step, "seed": self.seed, "rows": self.rows}

  def set_state(self, state: Mapping[str, int]) -> None:
    mine = {"seed": self.seed, "rows": self.rows}
    if any(int(state.get(k, v)) != v for k, v in mine.items()):
      raise ValueError(f"checkpointed row stream {dict(state)} differs from this one "
                       f"(seed {self.seed}, rows {self.rows})")
    self.step = int(state["step"])
