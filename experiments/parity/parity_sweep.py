"""Sparse-parity sweeps as populations: many seeds / sample sizes / inits at once.

Edelman et al. (NeurIPS 2023) map when an MLP learns an (n, k) sparse parity
as a function of data m, width r, steps T and luck (the seed). Each point of
that map is a probability over seeds, so the runs of one width train together
as one population (`framework.population`, the common step vmapped over runs):

  run j = (data pool d_j, sample count m_j, initial params theta_j^0, seed_j)

and every run does minibatch SGD (or AdamW, per `config.optimizer`, through
`framework.optim.make_optimizer`) on its own fixed training set
{(x_i, y_i)}_{i < m_j} of pool d_j,

    theta <- theta - lr (grad L_B(theta) + wd theta),  B ~ Unif{0..m_j-1}^b

(indices drawn with replacement from run j's own numpy Generator), with L the
hinge loss max(0, 1 - y f(x)) (or logistic, or softmax cross-entropy for
multi-class data): `config.model.loss` of `models.sparse_mlp`.

Early stopping. Every `trainer.eval_every` steps each run's accuracy on its
fresh test set is measured; a run *succeeds* at the first evaluation with
test accuracy >= `trainer.success_acc` (default 0.95: chance is 0.5, nets that
memorise without the parity feature sit at 0.5-0.7, and nets that found it
reach 0.95-1.0), and steps-to-success is that step count (a multiple of
eval_every). A run that has not succeeded after `trainer.max_steps` fails.
Finished runs leave the population, which is compacted and re-bucketed
(`framework.population`), so the failing runs, not the finished ones, pay
for the budget; a run's result is that of training it alone.

Lottery tickets (`lottery_ticket`): after training, keep each run's top-K
neurons by ||(w_i, b_i)|| ||a_i||, rewind them to their initial values and
retrain the width-K subnet; the control is K random neurons of the same
initial net.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from framework import mesh as mesh_lib
from framework import optim
from framework import population
from models import registry
from models import sparse_mlp


class SweepData(NamedTuple):
  """Data pools shared by the runs (replicated on every device).

  x_train [D, M, d], y_train [D, M]: pool d's training points; a run with m
    samples uses the first m. Labels are +-1 floats for the binary losses and
    class indices for "xent".
  x_test [D, T, d], y_test [D, T]: pool d's test set.
  """
  x_train: Any
  y_train: Any
  x_test: Any
  y_test: Any


class Runs(NamedTuple):
  """Per-run arrays, leading axis R."""
  data_index: np.ndarray  # int [R]: which pool.
  num_train: np.ndarray  # int [R]: m, the training-set size.
  seed: np.ndarray  # int [R, L]: entropy of the run's minibatch Generator.


class SweepResult(NamedTuple):
  """Per-run outcome, leading axis R (numpy)."""
  success: np.ndarray  # bool.
  steps_to_success: np.ndarray  # int; -1 when the run failed.
  steps_run: np.ndarray  # int: steps trained before stopping.
  test_acc: np.ndarray  # float: test accuracy when the run stopped.
  best_test_acc: np.ndarray  # float: best test accuracy seen.
  train_loss: np.ndarray  # float: minibatch loss of the run's last step.
  params: Optional[Dict[str, np.ndarray]]  # final params [R, ...] or None.
  acc_history: np.ndarray  # float [num_evals, R]; NaN once a run stopped.


# --------------------------------------------------------------------------
# The population of one width.


def model_for(config, width: int, num_outputs: int) -> sparse_mlp.SparseMLP:
  """The registered sparse MLP of `config.model` at this width (init given per run)."""
  spec = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
  spec.update(width=int(width), num_outputs=int(num_outputs))
  return registry.build(spec)


def _learning_rate(config) -> Any:
  """The constant peak lr (injected: a number each member may override), else the schedule."""
  sched = config.schedule
  if sched.name == "constant" and not int(sched.get("warmup_steps", 0)):
    return float(sched.peak_lr)
  return optim.make_schedule(sched, int(config.trainer.max_steps))


_POPULATIONS: Dict[tuple, population.Population] = {}


def population_for(config, width: int, num_inputs: int, num_outputs: int,
                   mesh: Mesh) -> population.Population:
  """The population (jitted step, evaluation, compaction) for one width, cached so
  that repeated sweeps of the same shapes compile once."""
  tc = config.trainer
  steps_per_call = int(tc.get("steps_per_call", 0) or tc.eval_every)
  model = model_for(config, width, num_outputs)
  key = (model, mesh, json.dumps(config.optimizer.to_dict(), sort_keys=True, default=str),
         json.dumps(config.schedule.to_dict(), sort_keys=True), int(tc.max_steps),
         steps_per_call, int(tc.batch_size), int(num_inputs),
         repr(config.sharding.rules))
  if key not in _POPULATIONS:
    opt = config.optimizer
    tx = population.inject(lambda learning_rate: optim.make_optimizer(opt, learning_rate),
                           learning_rate=_learning_rate(config))
    label_dtype = np.int32 if model.config.loss == "xent" else np.float32
    example = {"x": np.zeros((int(tc.batch_size), int(num_inputs)), np.float32),
               "y": np.zeros((int(tc.batch_size),), label_dtype)}
    _POPULATIONS[key] = population.Population(model, tx, mesh, example,
                                              steps_per_call=steps_per_call,
                                              rules=config.sharding.rules)
  return _POPULATIONS[key]


def sweep(config, data: SweepData, params0: sparse_mlp.Params, runs: Runs, *,
          mesh: Optional[Mesh] = None, keep_params: bool = False,
          on_eval: Optional[Callable[[int, np.ndarray, np.ndarray], None]] = None
          ) -> SweepResult:
  """Trains the R runs of `runs` (params0 batched on axis 0) with early stopping.

  config: model.loss, optimizer, schedule, trainer.{batch_size, max_steps,
    eval_every, success_acc, steps_per_call}, sharding.rules, mesh.shape.
  mesh: the member axis is split over its (data, fsdp) axes (default: the
    config's mesh over all devices).
  keep_params: also return every run's parameters when it stopped.
  on_eval(step, run_ids, accs): called after each evaluation with the ids of
    the runs still training and their test accuracies (for logging).
  """
  tc = config.trainer
  mesh = mesh if mesh is not None else mesh_lib.create_mesh(dict(config.mesh.shape))
  width, n = np.shape(params0["w"])[1:]
  num_outputs = np.shape(params0["a"])[-1]
  pop = population_for(config, width, n, num_outputs, mesh)
  label = np.int32 if pop.model.config.loss == "xent" else np.float32
  pools = population.PoolData(
      {"x": data.x_train, "y": np.asarray(data.y_train, label)},
      runs.data_index, runs.num_train, runs.seed, int(tc.batch_size), mesh,
      eval_pools={"x": data.x_test, "y": np.asarray(data.y_test, label)})
  state = pop.init(params=params0)
  report = None if on_eval is None else (
      lambda step, ids, metrics: on_eval(step, ids, metrics["accuracy"]))
  res = pop.train(state, pools.train_batches, total_steps=int(tc.max_steps),
                  eval_every=int(tc.eval_every), eval_batches=pools.eval_batches,
                  target=("accuracy", float(tc.success_acc)), keep_params=keep_params,
                  on_eval=report)
  return SweepResult(res.reached, res.reached_step, res.steps_run,
                     res.eval_metrics["accuracy"], res.best, res.train_metrics["loss"],
                     res.params, res.history["accuracy"])


# --------------------------------------------------------------------------
# Building runs.


def init_batch(seeds: np.ndarray, n: int, width: int, sparsity: Sequence[int], *,
               num_outputs: int = 1, bias_scale: float = 1.0,
               out_scale: float = 1.0) -> sparse_mlp.Params:
  """sparse_mlp.host_init for every run, stacked: seeds [R, L], sparsities [R] (n: dense)."""
  nets = [sparse_mlp.host_init(np.random.default_rng([int(v) for v in np.atleast_1d(sd)]), n,
                               width, int(s), num_outputs=num_outputs,
                               bias_scale=bias_scale, out_scale=out_scale)
          for sd, s in zip(seeds, sparsity)]
  return {k: np.stack([p[k] for p in nets]) for k in nets[0]}


def run_seeds(seeds: Sequence[int], *salts: Any) -> np.ndarray:
  """[R, 1 + len(salts)] Generator entropy: (seed_j, salt_1[j], ...).

  A salt is an int (the same for every run) or a per-run int sequence; use a
  distinct leading salt per purpose (e.g. 0: init, 1: minibatches).
  """
  seeds = np.asarray(seeds, np.int64)
  cols = [seeds] + [np.broadcast_to(np.asarray(s, np.int64), seeds.shape) for s in salts]
  return np.stack(cols, axis=1)


# --------------------------------------------------------------------------
# Lottery tickets.


class LotteryResult(NamedTuple):
  ticket: SweepResult  # top-K neurons, rewound to init, retrained.
  random: SweepResult  # K random neurons of the same init, retrained.
  pruned_acc: np.ndarray  # [R] test acc of the trained net cut to its top-K.
  top_index: np.ndarray  # [R, K] neuron indices of the tickets.
  lucky_in_ticket: np.ndarray  # [R] ticket neurons whose initial support covers S.
  lucky_total: np.ndarray  # [R] such neurons in the whole initial net.
  ticket_overlap: np.ndarray  # [R] mean |supp(w_i^0) & S| over ticket neurons.
  random_overlap: np.ndarray  # [R] the same over the random neurons.


def top_neurons(params: sparse_mlp.Params, keep: int) -> np.ndarray:
  """[R, keep] indices of each run's largest neuron_scores (batched params)."""
  scores = np.asarray(jax.vmap(sparse_mlp.neuron_scores)(params))
  return np.argsort(-scores, axis=1, kind="stable")[:, :keep]


def held_out_accuracy(config, params: sparse_mlp.Params, data: SweepData,
                  data_index: np.ndarray) -> np.ndarray:
  """[R] accuracy of run j's params on the test set of its pool (the model's loss sums)."""
  model = model_for(config, sparse_mlp.width_of(params), np.shape(params["a"])[-1])
  di = np.asarray(data_index)
  label = jnp.int32 if model.config.loss == "xent" else jnp.float32
  batch = {"x": jnp.asarray(data.x_test)[di], "y": jnp.asarray(data.y_test, label)[di]}
  sums = jax.vmap(model.loss)(jax.tree.map(jnp.asarray, params), batch)
  return np.asarray(sums["accuracy"] / sums["count"])


def lottery_ticket(config, data: SweepData, params_init: sparse_mlp.Params,
                   params_trained: sparse_mlp.Params, runs: Runs, keep: int, *,
                   supports: Optional[np.ndarray] = None, seed: int = 0,
                   mesh: Optional[Mesh] = None) -> LotteryResult:
  """Prune to the top-`keep` neurons, rewind to init, retrain; random control.

  params_init / params_trained are batched over the R runs of `runs`, which
  are also the retraining runs (same data and minibatch seeds).
  supports [D, k]: the hidden supports of the pools, to count each run's
  initially "lucky" neurons (support covering S).
  """
  top = top_neurons(params_trained, keep)
  width = np.asarray(params_init["w"]).shape[1]
  rng = np.random.default_rng(seed)
  rand = np.stack([rng.choice(width, keep, replace=False) for _ in range(top.shape[0])])
  take = lambda p, idx: jax.tree.map(np.asarray, jax.vmap(sparse_mlp.select_neurons)(
      jax.tree.map(jnp.asarray, p), jnp.asarray(idx)))
  ticket0 = take(params_init, top)
  random0 = take(params_init, rand)
  pruned_acc = held_out_accuracy(config, take(params_trained, top), data, runs.data_index)
  ticket = sweep(config, data, ticket0, runs, mesh=mesh)
  random = sweep(config, data, random0, runs, mesh=mesh)
  if supports is not None:
    di = np.asarray(runs.data_index)
    sup = jnp.asarray(np.asarray(supports)[di])
    overlap = np.asarray(jax.vmap(sparse_mlp.support_overlap)(
        jax.tree.map(jnp.asarray, params_init), sup))
    lucky = overlap == sup.shape[-1]
    lucky_total = lucky.sum(1)
    lucky_in_ticket = np.take_along_axis(lucky, top, 1).sum(1)
    ticket_overlap = np.take_along_axis(overlap, top, 1).mean(1)
    random_overlap = np.take_along_axis(overlap, rand, 1).mean(1)
  else:
    lucky_total = lucky_in_ticket = np.full(top.shape[0], -1)
    ticket_overlap = random_overlap = np.full(top.shape[0], np.nan)
  return LotteryResult(ticket, random, pruned_acc, top, lucky_in_ticket, lucky_total,
                       ticket_overlap, random_overlap)
