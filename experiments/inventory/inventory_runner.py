"""Runner: Gen-QOT arrivals and inventory policies trained through the simulator.

Reproduces the pipeline of Andaz et al. (2023), "Learning an inventory control
policy with general inventory arrival dynamics", on synthetic data:

 1. synthetic exogenous traces for N products and a noisy newsvendor buyer
    replayed against the ground-truth quantity-over-time (QOT) arrival process
    give an order/arrival history (training weeks) and held-out weeks
    (`history.py`);
 2. Gen-QOT (`models/genqot.py`, registered `genqot`) is fit by maximum
    likelihood to the training orders on `framework.trainer` (loss = NLL
    summed over orders, count = orders x L) and scored on held-out orders
    (CRPS, quantile loss, PIT calibration of cumulative receipts) against a
    lead-time-only model, an unconditional empirical model and the true
    process (oracle) (`arrival_eval.py`);
 3. a neural buying policy is trained on `framework.trainer` by
    back-propagating the discounted reward through the differentiable
    simulator (`simulator.py`, `policy_objective.py`) with (a) Gen-QOT
    arrivals and (b) lead-time-only arrivals (and, as a reference, (c) the
    true process);
 4. all policies and the base-stock / newsvendor baselines are backtested on
    the held-out weeks under the true arrival process, from the historical
    state at the start of the window (common random numbers).

Writes metrics.jsonl (+ TensorBoard), PNG plots, report.md and summary.json
into workdir; each training keeps its metrics and checkpoints in
workdir/genqot and workdir/policy_<arrivals>.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import batching
from experiments.inventory import arrival_eval
from experiments.inventory import inventory_config as config_file
from experiments.inventory import history
from experiments.inventory import inventory_plots
from experiments.inventory import inventory_report
from experiments.inventory import policies
from experiments.inventory import policy_objective
from experiments.inventory import simulator as sim
from framework import config as config_lib
from framework import metrics as metrics_lib
from framework import trainer
from models import genqot as gq
from models import registry

ARRIVAL_MODES = ("genqot", "lead_time", "true")


def default_config() -> ml_collections.ConfigDict:
  """The schema of inventory configs: the default variant's keys."""
  return config_file.get_config()


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, before any data is made or anything compiles."""
  config_lib.check_keys(cfg, default_config())
  req = config_lib.require
  d = cfg.data
  req(d.num_lags >= 2, "data.num_lags", f"{d.num_lags} must be >= 2")
  req(d.test_weeks > 0 and d.history_weeks % d.test_weeks == 0, "data.history_weeks",
      f"{d.history_weeks} must be a positive multiple of data.test_weeks={d.test_weeks}")
  req(d.history_weeks > d.num_lags, "data.history_weeks",
      f"{d.history_weeks} leaves no order with complete arrivals (num_lags={d.num_lags})")
  try:
    registry.make_config(_genqot_spec(cfg))
    gq.PolicyNet(**_policy_fields(cfg))
  except (TypeError, ValueError) as err:
    raise config_lib.ConfigError(str(err)) from None
  req(cfg.policy.rows <= d.num_products, "policy.rows",
      f"{cfg.policy.rows} rows of distinct products from {d.num_products} products")
  req(0 < cfg.policy.window_weeks <= d.history_weeks, "policy.window_weeks",
      f"{cfg.policy.window_weeks} must be in 1..data.history_weeks={d.history_weeks}")
  req(len(cfg.policy.tune_multipliers) > 0, "policy.tune_multipliers", "is empty")
  for section in ("genqot", "policy"):
    try:
      trainer.check_config(stage_config(cfg, section, 0))
    except config_lib.ConfigError as err:   # name the field inside its section
      raise config_lib.ConfigError(str(err).replace("config.", f"config.{section}.", 1)) from None


def _genqot_spec(cfg) -> dict:
  if "num_lags" in cfg.genqot.model:
    raise config_lib.ConfigError("config.genqot.model.num_lags: set data.num_lags instead")
  return dict(cfg.genqot.model, num_lags=int(cfg.data.num_lags))


def _policy_fields(cfg) -> dict:
  fields = dict(cfg.policy.model)
  if "hidden" in fields:
    fields["hidden"] = tuple(fields["hidden"])
  return fields


def stage_config(cfg: ml_collections.ConfigDict, section: str,
                 seed: int) -> ml_collections.ConfigDict:
  """The `framework.trainer` config of one training: its optimizer, schedule and
  trainer sections with the shared mesh, sharding and checkpoint sections."""
  s = cfg[section]
  return ml_collections.ConfigDict(dict(
      seed=int(seed), mesh=cfg.mesh.to_dict(), sharding=cfg.sharding.to_dict(),
      checkpoint=cfg.checkpoint.to_dict(), optimizer=s.optimizer.to_dict(),
      schedule=s.schedule.to_dict(), trainer=s.trainer.to_dict()))


# ----------------------------------------------------------------------------
# Gen-QOT.
# ----------------------------------------------------------------------------


class NLLCurve:
  """Eval hook: NLL per lag (loss / count of the model) on fixed order sets,
  written as `<prefix><set>_nll_per_lag` and kept in `curve` (step, values)."""

  def __init__(self, model, sets: dict[str, dict[str, np.ndarray]],
               writer: metrics_lib.MetricWriter, prefix: str = "genqot/", step0: int = 0):
    self.model, self.sets, self.writer = model, sets, writer
    self.prefix, self.step0 = prefix, step0
    self._loss = jax.jit(model.loss)
    self.curve: list[tuple[int, dict[str, float]]] = []

  def measure(self, step: int, params: Any) -> dict[str, float]:
    values = {}
    for name, batch in self.sets.items():
      sums = jax.device_get(self._loss(params, batch))
      values[name] = float(sums["loss"] / sums["count"])
    self.curve.append((int(step), values))
    self.writer.write(self.step0 + int(step),
                      {f"{self.prefix}{k}_nll_per_lag": v for k, v in values.items()})
    return values

  def __call__(self, info) -> None:
    self.measure(info.step, info.state.params)


def train_genqot(cfg, train: dict, test: dict, workdir: str, writer, *, mesh=None):
  """Fits Gen-QOT by maximum likelihood on `framework.trainer`.

  Returns (module, params, curve) with curve [(step, {train, test})] of the
  NLL per lag on the held-out orders and an equally large training subset.
  """
  g = cfg.genqot
  model = registry.build(_genqot_spec(cfg))
  seed = int(cfg.seed) + 1
  batches = batching.BatchIterator(dict(x=train["x"], rho=train["rho"]), int(g.batch_size),
                                   seed=seed, shard_index=jax.process_index(),
                                   num_shards=jax.process_count())
  m = train["x"].shape[0]
  sub = np.random.default_rng(seed).choice(m, min(m, test["x"].shape[0]), replace=False)
  curve = NLLCurve(model, {"train": dict(x=train["x"][sub], rho=train["rho"][sub]),
                           "test": dict(x=test["x"], rho=test["rho"])}, writer)
  result = trainer.train(stage_config(cfg, "genqot", seed), model, batches,
                         workdir=os.path.join(workdir, "genqot"), mesh=mesh,
                         hooks=[(curve, int(g.trainer.eval_every))])
  if not curve.curve or curve.curve[-1][0] != result.final_step:
    curve.measure(result.final_step, result.state.params)
  return model.module, result.state.params, curve.curve


# ----------------------------------------------------------------------------
# Policies.
# ----------------------------------------------------------------------------


def arrival_fns(module, params, num_lags: int) -> dict[str, sim.ArrivalFn]:
  return {"genqot": sim.genqot_arrivals(module, params),
          "lead_time": sim.lead_time_arrivals(num_lags),
          "true": sim.true_arrivals(num_lags)}


def _training_curve(run_dir: str) -> tuple[list[int], list[float]]:
  """(steps, mean normalised return) logged by the trainer (last record per step)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  by_step = {}
  if os.path.exists(path):
    for r in metrics_lib.read_metrics(path):
      if isinstance(r.get("train/return"), float):
        by_step[r["step"]] = r["train/return"]
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def train_policies(cfg, fns: dict[str, sim.ArrivalFn], data: dict, workdir: str, *,
                   mesh=None):
  """Trains one neural policy per simulator mode on `framework.trainer` by
  maximising the normalised discounted return over the history weeks.

  Every mode sees the same row stream and starts from the same parameters
  (common random numbers). Returns (net, {mode: params}, {mode: curve},
  timings).
  """
  p = cfg.policy
  net = gq.PolicyNet(**_policy_fields(cfg))
  exog, static = data["exog_hist"], data["static"]
  n, t_hist = exog.demand.shape
  rows = min(int(p.rows), n)
  window = min(int(p.window_weeks), t_hist)
  seed = int(cfg.seed) + 2
  modes = list(ARRIVAL_MODES) if p.train_oracle else list(ARRIVAL_MODES[:2])
  result, curves, timings = {}, {}, {}
  for mode in modes:
    t0 = time.perf_counter()
    objective = policy_objective.SimulatedProfit(
        net, fns[mode], exog, static, gamma=cfg.gamma, window=window,
        num_lags=cfg.data.num_lags)
    stream = policy_objective.PolicyRows(
        np.asarray(static.scale), t_hist, window, rows, seed=seed,
        shard_index=jax.process_index(), num_shards=jax.process_count())
    run_dir = os.path.join(workdir, f"policy_{mode}")
    res = trainer.train(stage_config(cfg, "policy", seed), objective, stream,
                        workdir=run_dir, mesh=mesh)
    result[mode] = res.state.params
    curves[mode] = _training_curve(run_dir)
    timings[f"policy_training_{mode}_sim"] = time.perf_counter() - t0
  return net, result, curves, timings


class _Backtester:
  """One jitted simulator for every policy spec and arrival mode."""

  def __init__(self, net, gamma, fns, jit):
    fn_list = [fns[m] for m in ARRIVAL_MODES]

    def f(spec, mode, exog, static, state, key):
      pol = policies.mixed_policy(net, gamma, spec)
      return sim.simulate(pol, sim.switch_arrivals(fn_list, mode), exog, static, key,
                          state)[1]
    self._f = jit(f)

  def __call__(self, spec, mode, exog, static, state, key):
    return self._f(spec, jnp.int32(ARRIVAL_MODES.index(mode)), exog, static, state, key)


def _paired(ret_a, ret_b):
  """Mean and standard error of the paired difference over products."""
  diff = np.asarray(ret_a, np.float64) - np.asarray(ret_b, np.float64)
  return float(diff.mean()), float(diff.std() / np.sqrt(diff.size))


class _Outs:
  """StepOut plus the demand it was run on (for plots)."""

  def __init__(self, outs, demand):
    self.__dict__.update(outs._asdict())
    self.demand_ref = np.asarray(demand)


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> dict:
  """The whole study; `mesh` (optional) is passed to both trainings."""
  cfg = config
  validate(cfg)
  options = {"xla_backend_optimization_level": 0} if cfg.xla_fast_compile else None

  def jit(fn, **kw):
    """jax.jit with the run's compiler options (`xla_fast_compile` trades XLA
    backend optimisation for compile time in the study's own programs)."""
    return jax.jit(fn, compiler_options=options, **kw)

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(cfg.to_json_best_effort(indent=2))
  writer = metrics_lib.MetricWriter(workdir)
  timings = {}
  t_all = time.perf_counter()
  rng = np.random.default_rng(cfg.seed)
  key = jax.random.PRNGKey(cfg.seed)
  k_data, _, k_eval, k_pol, k_bt = jax.random.split(key, 5)
  num_lags, gamma = cfg.data.num_lags, cfg.gamma

  t0 = time.perf_counter()
  data = history.make_data(cfg, rng, k_data, jit=jit)
  train, test = history.order_dataset(data, cfg.genqot.eval_orders, rng)
  timings["data_and_history"] = time.perf_counter() - t0
  static, exog_test, state_test = data["static"], data["exog_test"], data["state_test"]

  t0 = time.perf_counter()
  module, gq_params, gq_curve = train_genqot(cfg, train, test, workdir, writer, mesh=mesh)
  timings["genqot_training"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  samples = arrival_eval.sample_arrival_models(
      module, gq_params, train, test, static, k_eval, num_samples=cfg.genqot.eval_samples,
      num_lags=num_lags, jit=jit)
  arrival_metrics, truth = arrival_eval.score_arrival_models(samples, test["rho"])
  timings["arrival_model_evaluation"] = time.perf_counter() - t0
  gq_steps = int(cfg.genqot.trainer.total_steps)
  res = {"genqot/train_orders": int(train["x"].shape[0]),
         "genqot/test_orders": int(test["x"].shape[0]),
         "genqot/train_nll_per_lag": gq_curve[-1][1]["train"],
         "genqot/test_nll_per_lag": gq_curve[-1][1]["test"]}
  for name, m in arrival_metrics.items():
    for k in ("crps", "ql_0.1", "ql_0.5", "ql_0.9", "mean_yield_pred", "split_rate_pred"):
      res[f"{name}/{k}"] = m[k]
    res[f"{name}/max_calibration_error"] = float(
        np.max(np.abs(m["calibration_observed"] - m["calibration_levels"])))
  writer.write(gq_steps, {k: v for k, v in res.items() if "/" in k})
  inventory_plots.plot_arrivals(workdir, arrival_metrics, samples, test, num_lags)

  fns = arrival_fns(module, gq_params, num_lags)
  scale = np.asarray(data["products"].scale)
  net, trained, curves, t_train = train_policies(cfg, fns, data, workdir, mesh=mesh)
  timings.update(t_train)
  for mode, (steps, values) in curves.items():
    offset = gq_steps + ARRIVAL_MODES.index(mode) * int(cfg.policy.trainer.total_steps)
    for s, v in zip(steps, values):
      writer.write(offset + s, {f"policy/{mode}/train_return_norm": v})
  backtest = _Backtester(net, gamma, fns, jit)
  zero_net = jax.tree_util.tree_map(jnp.zeros_like, trained["genqot"])
  nv_spec = lambda m: {"net": zero_net, "mult": jnp.float32(m), "use_net": jnp.float32(0)}

  # Newsvendor multiplier tuned in the Gen-QOT simulator on the last history
  # chunk (from the historical state at its start).
  t0 = time.perf_counter()
  norm = np.asarray(static.base_price) * scale
  tune_vals = []
  for m in cfg.policy.tune_multipliers:
    outs = backtest(nv_spec(m), "genqot", data["exog_tune"], static, data["state_tune"], k_pol)
    tune_vals.append(float(np.mean(np.asarray(sim.discounted_return(outs.reward, gamma)) / norm)))
  tuned_mult = float(cfg.policy.tune_multipliers[int(np.argmax(tune_vals))])
  timings["base_stock_tuning"] = time.perf_counter() - t0

  specs = {"newsvendor": nv_spec(1.0), "newsvendor_tuned": nv_spec(tuned_mult)}
  for mode, prm in trained.items():
    specs[f"policy_{mode}"] = {"net": prm, "mult": jnp.float32(1.0), "use_net": jnp.float32(1)}

  # Held-out backtests.
  t0 = time.perf_counter()
  table, rets, outs_by_name = {}, {}, {}
  for name, spec in specs.items():
    row = {}
    for sim_name, mode in (("true", "true"), ("genqot_sim", "genqot"),
                           ("lead_time_sim", "lead_time")):
      outs = backtest(spec, mode, exog_test, static, state_test, k_bt)
      row[sim_name] = sim.summarize(outs, gamma, scale)
      if sim_name == "true":
        rets[name] = np.asarray(sim.discounted_return(outs.reward, gamma))
        outs_by_name[name] = _Outs(outs, exog_test.demand)
    table[name] = row
  for name in table:
    table[name]["diff_mean"], table[name]["diff_se"] = _paired(rets[name], rets["newsvendor"])
  hind = []
  for m in cfg.policy.tune_multipliers:
    outs = backtest(nv_spec(m), "true", exog_test, static, state_test, k_bt)
    hind.append(float(np.mean(np.asarray(sim.discounted_return(outs.reward, gamma)))))
  hindsight = {"mult": float(cfg.policy.tune_multipliers[int(np.argmax(hind))]),
               "return": max(hind)}
  timings["backtests"] = time.perf_counter() - t0
  # Simulation rate of a compiled backtest (newsvendor, true arrivals).
  t0 = time.perf_counter()
  jax.block_until_ready(backtest(specs["newsvendor"], "true", exog_test, static, state_test,
                                 k_bt).reward)
  res["sim_rate/product_weeks_per_s"] = (
      exog_test.demand.shape[0] * exog_test.demand.shape[1] / (time.perf_counter() - t0))

  for name, row in table.items():
    for sim_name in ("true", "genqot_sim", "lead_time_sim"):
      prefix = "backtest" if sim_name == "true" else f"backtest_{sim_name}"
      for k, v in row[sim_name].items():
        res[f"{prefix}/{name}/{k}"] = v
    res[f"backtest/{name}/diff_vs_newsvendor"] = row["diff_mean"]
    res[f"backtest/{name}/diff_vs_newsvendor_se"] = row["diff_se"]
  res["newsvendor_tuned/multiplier"] = tuned_mult
  res["newsvendor_hindsight/multiplier"] = hindsight["mult"]
  res["newsvendor_hindsight/return_mean"] = hindsight["return"]
  if "policy_genqot" in rets:
    gap, gap_se = _paired(rets["policy_genqot"], rets["policy_lead_time"])
    res["qot_cost/return_gap"] = gap
    res["qot_cost/return_gap_se"] = gap_se
    res["qot_cost/return_gap_pct"] = gap / abs(float(rets["policy_genqot"].mean()))
    res["policy_genqot/gain_vs_newsvendor_pct"] = float(
        rets["policy_genqot"].mean() / rets["newsvendor"].mean() - 1.0)
    res["policy_genqot/gain_vs_newsvendor_tuned_pct"] = float(
        rets["policy_genqot"].mean() / rets["newsvendor_tuned"].mean() - 1.0)
  res["policy_ranking"] = sorted(table, key=lambda k: -table[k]["true"]["return_mean"])

  timings["total"] = time.perf_counter() - t_all
  for k, v in timings.items():
    res[f"runtime/{k}"] = v
  final_step = gq_steps + len(ARRIVAL_MODES) * int(cfg.policy.trainer.total_steps) + 1
  writer.write(final_step, {k: v for k, v in res.items() if isinstance(v, (int, float))})
  writer.close()
  inventory_plots.plot_backtest(workdir, table, curves, outs_by_name, scale)
  inventory_report.write_report(workdir, cfg, res, table, arrival_metrics, truth, timings,
                                tuned_mult, hindsight)
  res["smoke"] = bool(cfg.get("smoke", False))
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(res, f, indent=1, sort_keys=True)
  return res
