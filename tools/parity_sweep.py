"""Vmapped sweep engine: many seeds / sample sizes / inits of one width at once.

Edelman et al. (NeurIPS 2023) map when an MLP learns an (n, k) sparse parity
as a function of data m, width r, steps T and luck (the seed). Each point of
that map is a probability over seeds, so we train batches of R independent
runs in one XLA computation (`jax.vmap` over the run axis):

  run j = (data pool d_j, sample count m_j, initial params theta_j^0, seed_j)

and every run does minibatch SGD (or AdamW) on its own fixed training set
{(x_i, y_i)}_{i < m_j} of pool d_j,

    theta <- theta - lr (grad L_B(theta) + wd theta),  B ~ Unif{0..m_j-1}^b

(indices drawn with replacement), with L the hinge loss max(0, 1 - y f(x))
(or logistic, or softmax cross-entropy for multi-class data).

Early stopping. Every `eval_every` steps each run's accuracy on its fresh
test set is measured; a run *succeeds* at the first evaluation with test
accuracy >= `success_acc` (default 0.95: chance is 0.5, nets that memorise
without the parity feature sit at 0.5-0.7, and nets that found it reach
0.95-1.0), and steps-to-success is that step count (a multiple of
eval_every). A run that has not succeeded after `max_steps` fails. Runs stop
when they succeed; the live runs are then gathered to the front of the batch,
which shrinks to the smallest power-of-two multiple of the device count that
holds them (few shapes, few compilations), so the failing runs, not the
finished ones, pay for the budget. A run's
arithmetic does not depend on the other runs of its batch, so the sweep gives
each run the result of training it alone (up to float reassociation).

With several devices the run axis is sharded over a 1-D mesh ("runs") with
`jax.sharding.NamedSharding` (data pools replicated); XLA partitions the
vmapped computation along it.

Lottery tickets (`lottery_ticket`): after training, keep each run's top-K
neurons by ||(w_i, b_i)|| ||a_i||, rewind them to their initial values and
retrain the width-K subnet; the control is K random neurons of the same
initial net.

Tabular (`tabular_*`): the same engine on scikit-learn's shipped
classification sets (optionally with appended Gaussian noise features),
against random forests.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models import sparse_mlp


# --------------------------------------------------------------------------
# Data, runs, hyper-parameters.


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


class HParams(NamedTuple):
  loss: str = "hinge"  # "hinge" | "logistic" (binary, y in +-1) | "xent".
  optimizer: str = "sgd"  # "sgd" (L2 weight decay) | "adam" (AdamW).
  lr: float = 0.1
  weight_decay: float = 0.01
  batch_size: int = 32
  max_steps: int = 4000
  eval_every: int = 100
  success_acc: float = 0.95  # > 1 disables early stopping.


class SweepResult(NamedTuple):
  """Per-run outcome, leading axis R (numpy)."""
  success: np.ndarray  # bool.
  steps_to_success: np.ndarray  # int; -1 when the run failed.
  steps_run: np.ndarray  # int: steps trained before stopping.
  test_acc: np.ndarray  # float: test accuracy when the run stopped.
  best_test_acc: np.ndarray  # float: best test accuracy seen.
  train_loss: np.ndarray  # float: mean minibatch loss of the last interval.
  params: Optional[Dict[str, np.ndarray]]  # final params [R, ...] or None.
  acc_history: np.ndarray  # float [num_evals, R]; NaN once a run stopped.


def make_optimizer(hp: HParams) -> optax.GradientTransformation:
  if hp.optimizer == "sgd":
    return optax.chain(optax.add_decayed_weights(hp.weight_decay), optax.sgd(hp.lr))
  if hp.optimizer == "adam":
    return optax.adamw(hp.lr, weight_decay=hp.weight_decay)
  raise ValueError(f"unknown optimizer {hp.optimizer!r}; use 'sgd' or 'adam'")


def loss_fn(params: sparse_mlp.Params, x: jax.Array, y: jax.Array, loss: str) -> jax.Array:
  """Mean loss of a batch."""
  out = sparse_mlp.apply(params, x)
  if loss == "xent":
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y.astype(jnp.int32)))
  margin = y * out[:, 0]
  if loss == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - margin))
  if loss == "logistic":
    return jnp.mean(jax.nn.softplus(-margin))
  raise ValueError(f"unknown loss {loss!r}; use 'hinge', 'logistic' or 'xent'")


def accuracy(params: sparse_mlp.Params, x: jax.Array, y: jax.Array, loss: str) -> jax.Array:
  out = sparse_mlp.apply(params, x)
  if loss == "xent":
    return jnp.mean((jnp.argmax(out, -1) == y.astype(jnp.int32)).astype(jnp.float32))
  # f = 0 counts as wrong, so an all-zero net scores 0, not 1/2.
  return jnp.mean((y * out[:, 0] > 0).astype(jnp.float32))


def train_step(params, opt_state, idx, data_index, data: SweepData, hp: HParams,
               opt: optax.GradientTransformation):
  """One step of one run on minibatch x_train[data_index, idx]: (params, opt_state, loss)."""
  x = data.x_train[data_index, idx]
  y = data.y_train[data_index, idx]
  loss, grads = jax.value_and_grad(loss_fn)(params, x, y, hp.loss)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def _chunk(params, opt_state, idx, data_index, data, *, hp, opt):
  """len(idx) = eval_every steps of one run, then its test accuracy."""

  def body(carry, batch_idx):
    p, o = carry
    p, o, loss = train_step(p, o, batch_idx, data_index, data, hp, opt)
    return (p, o), loss

  (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), idx)
  acc = accuracy(params, data.x_test[data_index], data.y_test[data_index], hp.loss)
  return params, opt_state, jnp.mean(losses), acc


def _compiled_chunk(hp: HParams):
  # Only what the traced step depends on keys the cache (not max_steps etc.).
  return _compiled_chunk_cached(hp._replace(max_steps=0, success_acc=0.0))


@functools.lru_cache(maxsize=None)
def _compiled_chunk_cached(hp: HParams):
  opt = make_optimizer(hp)
  fn = functools.partial(_chunk, hp=hp, opt=opt)
  return jax.jit(jax.vmap(fn, in_axes=(0, 0, 0, 0, None))), opt


# --------------------------------------------------------------------------
# The sweep loop.


def _take(tree, index):
  return jax.tree.map(lambda a: a[index], tree)


def _round_up(count: int, multiple: int) -> int:
  return -(-count // multiple) * multiple


def _bucket(count: int, num_devices: int) -> int:
  """Smallest power-of-two multiple of num_devices holding count runs."""
  size = num_devices
  while size < count:
    size *= 2
  return size


def sweep(data: SweepData, params0: sparse_mlp.Params, runs: Runs, hp: HParams, *,
          devices: Optional[Sequence[jax.Device]] = None,
          keep_params: bool = False,
          on_eval: Optional[Callable[[int, np.ndarray, np.ndarray], None]] = None
          ) -> SweepResult:
  """Trains the R runs of `runs` (params0 batched on axis 0) with early stopping.

  devices: the run axis is sharded over these (default: all local devices).
  keep_params: also return every run's parameters when it stopped.
  on_eval(step, run_ids, accs): called after each evaluation with the ids of
    the runs still training and their test accuracies (for logging).
  """
  data_index = np.asarray(runs.data_index, np.int32)
  num_train = np.asarray(runs.num_train, np.int32)
  # Minibatch indices come from per-run numpy Generators on the host, so a
  # run's batches do not depend on the batch it shares (nor on XLA's RNG).
  gens = [np.random.default_rng([int(v) for v in np.atleast_1d(sd)]) for sd in runs.seed]
  num_runs = data_index.shape[0]
  pool = np.asarray(data.x_train).shape[1]
  if np.any(num_train < 1) or np.any(num_train > pool):
    raise ValueError(f"num_train must lie in [1, {pool}], got {num_train}")
  devices = list(jax.local_devices() if devices is None else devices)
  mesh = Mesh(np.array(devices), ("runs",))
  by_run = NamedSharding(mesh, P("runs"))
  chunk, opt = _compiled_chunk(hp)
  data = jax.device_put(SweepData(*(jnp.asarray(a) for a in data)), NamedSharding(mesh, P()))

  # Batch slot i trains run slot_ids[i]; slots past `count` repeat a live run
  # (padding to a multiple of the device count) and are ignored.
  count = num_runs
  size = _round_up(num_runs, len(devices))
  slot_ids = np.concatenate([np.arange(num_runs), np.zeros(size - num_runs, int)])
  params = jax.device_put(_take(jax.tree.map(np.asarray, params0), slot_ids), by_run)
  opt_state = jax.jit(jax.vmap(opt.init))(params)

  success = np.zeros(num_runs, bool)
  steps_to_success = np.full(num_runs, -1)
  steps_run = np.zeros(num_runs, int)
  test_acc = np.zeros(num_runs)
  best_acc = np.zeros(num_runs)
  train_loss = np.full(num_runs, np.nan)
  history = []
  final = None
  if keep_params:
    final = {k: np.zeros(np.shape(v), np.asarray(v).dtype) for k, v in params0.items()}

  step = 0
  while step < hp.max_steps and count:
    idx = np.zeros((size, hp.eval_every, hp.batch_size), np.int32)  # padding: row 0.
    for i, run in enumerate(slot_ids[:count]):
      idx[i] = gens[run].integers(0, num_train[run], (hp.eval_every, hp.batch_size))
    di = jax.device_put(data_index[slot_ids], by_run)
    params, opt_state, loss, acc = chunk(params, opt_state, jax.device_put(idx, by_run), di,
                                         data)
    step += hp.eval_every
    acc, loss = np.asarray(acc)[:count], np.asarray(loss)[:count]
    ids = slot_ids[:count]
    row = np.full(num_runs, np.nan)
    row[ids] = acc
    history.append(row)
    test_acc[ids] = acc
    best_acc[ids] = np.maximum(best_acc[ids], acc)
    train_loss[ids] = loss
    steps_run[ids] = step
    if on_eval is not None:
      on_eval(step, ids, acc)
    won = acc >= hp.success_acc
    success[ids[won]] = True
    steps_to_success[ids[won]] = step
    done = won | (step >= hp.max_steps)
    if keep_params and done.any():
      got = jax.tree.map(lambda a: np.asarray(a[np.flatnonzero(done)]), params)
      for name in final:
        final[name][ids[done]] = got[name]
    live = np.flatnonzero(~done)
    if 0 < live.size < count:
      count = live.size
      size = min(size, _bucket(count, len(devices)))
      order = np.full(size, live[0])
      order[:count] = live
      params, opt_state = jax.device_put(_take((params, opt_state), order), by_run)
      slot_ids = slot_ids[order]
    elif not live.size:
      count = 0

  return SweepResult(success, steps_to_success, steps_run, test_acc, best_acc, train_loss,
                     final, np.array(history).reshape(-1, num_runs))


# --------------------------------------------------------------------------
# Building runs.


def init_batch(seeds: np.ndarray, n: int, width: int, sparsity: Sequence[int], *,
               num_outputs: int = 1, bias_scale: float = 1.0,
               out_scale: float = 1.0) -> sparse_mlp.Params:
  """sparse_mlp.init for every run, stacked: seeds [R, L], sparsities [R] (n: dense)."""
  nets = [sparse_mlp.host_init(np.random.default_rng([int(v) for v in np.atleast_1d(sd)]), n,
                          width, int(s), num_outputs=num_outputs, bias_scale=bias_scale,
                          out_scale=out_scale)
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


def lottery_ticket(data: SweepData, params_init: sparse_mlp.Params,
                   params_trained: sparse_mlp.Params, runs: Runs, keep: int,
                   hp: HParams, *, supports: Optional[np.ndarray] = None,
                   seed: int = 0, devices=None) -> LotteryResult:
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
  take = jax.vmap(sparse_mlp.select_neurons)
  ticket0 = take(params_init, jnp.asarray(top))
  random0 = take(params_init, jnp.asarray(rand))
  pruned = take(params_trained, jnp.asarray(top))
  di = np.asarray(runs.data_index)
  pruned_acc = np.asarray(jax.vmap(accuracy, in_axes=(0, 0, 0, None))(
      pruned, jnp.asarray(data.x_test)[di], jnp.asarray(data.y_test)[di], hp.loss))
  ticket = sweep(data, ticket0, runs, hp, devices=devices)
  random = sweep(data, random0, runs, hp, devices=devices)
  if supports is not None:
    sup = jnp.asarray(np.asarray(supports)[di])
    overlap = np.asarray(jax.vmap(sparse_mlp.support_overlap)(params_init, sup))
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


# --------------------------------------------------------------------------
# Tabular benchmarks (scikit-learn's shipped data sets, no downloads).


TABULAR_LOADERS = ("breast_cancer", "wine", "digits", "iris")


def load_tabular(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(X float64 [N, d], y int [N]) of a data set shipped with scikit-learn."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  if name not in TABULAR_LOADERS:
    raise ValueError(f"unknown tabular data set {name!r}; choose from {TABULAR_LOADERS}")
  x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
  return np.asarray(x, np.float64), np.asarray(y, np.int64)


def add_noise_features(x: np.ndarray, num_noise: int, seed: int) -> np.ndarray:
  """Appends num_noise i.i.d. N(0, 1) columns (irrelevant features)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([x, rng.standard_normal((x.shape[0], num_noise))], axis=1)


class TabularSplit(NamedTuple):
  x_train: np.ndarray  # [m, d], standardised with training statistics.
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def tabular_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int,
                  test_fraction: float = 0.25) -> TabularSplit:
  """A stratified test split, then the first `fraction` of the training pool.

  The test set depends only on the seed, so every training fraction of a
  seed is scored on the same points. Features are standardised with the mean
  and std of the training subset (constant columns stay 0).
  """
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  x_pool, x_test, y_pool, y_test = train_test_split(
      x, y, test_size=test_fraction, random_state=seed, stratify=y)
  m = max(int(round(fraction * len(y_pool))), len(np.unique(y)))
  if m < len(y_pool):
    x_pool, _, y_pool, _ = train_test_split(
        x_pool, y_pool, train_size=m, random_state=seed, stratify=y_pool)
  mean, std = x_pool.mean(0), x_pool.std(0)
  std = np.where(std > 1e-12, std, 1.0)
  return TabularSplit(((x_pool - mean) / std).astype(np.float32), y_pool,
                      ((x_test - mean) / std).astype(np.float32), y_test)


def stack_splits(splits: Sequence[TabularSplit]) -> tuple[SweepData, np.ndarray]:
  """SweepData over splits (training sets zero-padded to the largest) and m [D]."""
  m = np.array([len(s.y_train) for s in splits])
  pad = int(m.max())
  d = splits[0].x_train.shape[1]
  x_train = np.zeros((len(splits), pad, d), np.float32)
  y_train = np.zeros((len(splits), pad), np.float32)
  for i, s in enumerate(splits):
    x_train[i, :m[i]] = s.x_train
    y_train[i, :m[i]] = s.y_train
  x_test = np.stack([s.x_test for s in splits])
  y_test = np.stack([s.y_test for s in splits]).astype(np.float32)
  return SweepData(x_train, y_train, x_test, y_test), m


def random_forest_accuracy(split: TabularSplit, seed: int, num_trees: int = 200) -> float:
  from sklearn.ensemble import RandomForestClassifier  # pylint: disable=g-import-not-at-top
  rf = RandomForestClassifier(n_estimators=num_trees, random_state=seed, n_jobs=1)
  rf.fit(split.x_train, split.y_train)
  return float(np.mean(rf.predict(split.x_test) == split.y_test))
