"""Benchmark: product-weeks per second of the compiled QOT backtest.

  python -m experiments.inventory.sim_benchmark [--products 10000 --weeks 104 --lags 10]
      [--with_genqot]

Times (best of 3, after compiling) the newsvendor backtest with true
arrivals sampled in the loop, with replayed shares, its value-and-gradient
in the base-stock multiplier, and optionally with arrivals drawn by an
(untrained) Gen-QOT model inside the scan.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import inventory as inv_data
from experiments.inventory import policies
from experiments.inventory import simulator as sim
from models import genqot


def benchmark(num_products: int = 10_000, num_weeks: int = 104, num_lags: int = 10,
              repeats: int = 3, with_genqot: bool = False) -> dict:
  rng = np.random.default_rng(0)
  products = inv_data.make_products(rng, num_products)
  traces = inv_data.make_traces(rng, products, num_weeks, horizon=num_lags)
  lt = np.full((num_products, num_lags), 1.0 / num_lags, np.float32)
  static = sim.make_static(products, lt)
  exog = sim.exog_from_traces(traces)
  gamma = 0.99
  key = jax.random.PRNGKey(0)
  results = {}

  @jax.jit
  def run_true(mult, key):
    _, outs = sim.simulate(policies.newsvendor_policy(gamma, mult),
                           sim.true_arrivals(num_lags), exog, static, key)
    return jnp.mean(sim.discounted_return(outs.reward, gamma)), outs.rho

  @jax.jit
  def run_replay(mult, rho, key):
    _, outs = sim.simulate(policies.newsvendor_policy(gamma, mult), sim.replay_arrivals,
                           exog._replace(rho=rho), static, key)
    return jnp.mean(sim.discounted_return(outs.reward, gamma))

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
    feats = sim.arrival_features(jnp.float32(1.0),
                                 jax.tree_util.tree_map(lambda a: a[0, 0], exog),
                                 jax.tree_util.tree_map(lambda a: a[0], static))
    gq_params = jax.jit(model.init)(key, feats[None], jnp.zeros((1, num_lags)))["params"]

    @jax.jit
    def run_genqot(mult, key):
      _, outs = sim.simulate(policies.newsvendor_policy(gamma, mult),
                             sim.genqot_arrivals(model, gq_params), exog, static, key)
      return jnp.mean(sim.discounted_return(outs.reward, gamma))

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
  for name, r in benchmark(args.products, args.weeks, args.lags,
                           with_genqot=args.with_genqot).items():
    print(f"{name:>22}: {r['seconds']:.3f} s  ->  {r['rate']:,.0f} product-weeks/s")
