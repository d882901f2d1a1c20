"""Populations: many independent runs of one model trained as one computation.

A population is R members; member j is (initial parameters theta_j^0,
optimizer hyper-parameters h_j, its own data stream B_j^0, B_j^1, ...). Every
member follows the common step (`framework.train_step.make_train_step`),

    g_j^t = grad_theta (1/|B_j^t|) sum_{i in B_j^t} l(theta_j^t; z_i),
    (theta_j^{t+1}, s_j^{t+1}) = opt(theta_j^t, s_j^t, g_j^t; h_j),

and the population step is `jax.vmap` of it over the member axis. Member j's
arithmetic never touches another member's, so a population gives each member
the result of training it alone (up to float reassociation). Sweeps over seeds,
data sizes, initialisations and learning rates become one XLA computation.

Layout. The member axis is split over the mesh's batch axes (data, fsdp) with
explicit in/out shardings; a remaining mesh axis (tensor) shards each member's
own parameters by their logical names, as for a single model. Populations hold
a multiple of the number of member shards D = |data| * |fsdp|; slots past the
live count repeat a live member and their results are discarded.

Dispatch. `steps_per_call` steps per call (`train_step.scan_steps` inside the
vmap), driven by the common `framework.loop.Loop`; evaluation, stopping and
logging are loop hooks.

Dropping finished members (`Population.train`): every `eval_every` steps each
member is evaluated on its own eval batch; a member is finished when its
target metric reached the threshold or its step budget is spent. Finished
members leave, the live ones are gathered to the front, and the population
shrinks to the smallest power-of-two multiple of D that holds them (few
shapes, few compilations), so the budget is paid by the members still
training, not by the finished ones.

Hyper-parameters per member: build the optimizer with `inject(factory,
learning_rate=...)` (`optax.inject_hyperparams`: the named hyper-parameters
live in the optimizer state) and give `init(..., hparams={"learning_rate":
[R values]})`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from framework import loop as loop_lib
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib
from framework.train_state import TrainState
from models import contract

MEMBER_AXES = sharding_lib.BATCH_AXES


# --------------------------------------------------------------------------
# Layout helpers.


def num_shards(mesh: Mesh) -> int:
  """D: how many ways the member axis is split (the product of data and fsdp)."""
  return math.prod(mesh.shape.get(a, 1) for a in MEMBER_AXES)


def bucket(count: int, shards: int) -> int:
  """The smallest power-of-two multiple of `shards` that holds `count` members."""
  size = shards
  while size < count:
    size *= 2
  return size


def _round_up(count: int, multiple: int) -> int:
  return -(-count // multiple) * multiple


def _strip(axes: Any) -> Any:
  """Mesh axes with the member axes removed (None when nothing is left)."""
  if axes is None:
    return None
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  kept = tuple(a for a in axes if a not in MEMBER_AXES)
  return None if not kept else kept[0] if len(kept) == 1 else kept


def member_rules(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Sharding rules inside one member: the member axes are taken by the population."""
  return tuple((name, _strip(axes)) for name, axes in sharding_lib.normalize_rules(rules))


def _stacked(sharding: NamedSharding, mesh: Mesh) -> NamedSharding:
  """A member's sharding with the member axis prepended over (data, fsdp)."""
  inner = tuple(_strip(a) for a in sharding.spec)
  return NamedSharding(mesh, P(MEMBER_AXES, *inner))


def inject(factory: Callable[..., optax.GradientTransformation],
           **hyperparams: Any) -> optax.GradientTransformation:
  """`optax.inject_hyperparams(factory)(**hyperparams)`: numeric hyper-parameters
  (e.g. learning_rate, a number, not a schedule) live in the optimizer state, so
  each member of a population can carry its own (`Population.init(hparams=...)`)."""
  return optax.inject_hyperparams(factory)(**hyperparams)


def _set_hyperparams(opt_state: Any, values: Mapping[str, Any]) -> Any:
  """Replaces `hyperparams[name]` in every injected-hyper-parameter state."""
  found = set()

  def visit(node):
    if hasattr(node, "hyperparams") and isinstance(node.hyperparams, dict) and hasattr(
        node, "_replace"):
      hp = dict(node.hyperparams)
      for name, value in values.items():
        if name in hp:
          hp[name] = jnp.asarray(value, hp[name].dtype).reshape(hp[name].shape)
          found.add(name)
      return node._replace(hyperparams=hp, inner_state=visit(node.inner_state))
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return type(node)(*(visit(c) for c in node))
    if isinstance(node, (tuple, list)):
      return type(node)(visit(c) for c in node)
    if isinstance(node, dict):
      return {k: visit(v) for k, v in node.items()}
    return node

  out = visit(opt_state)
  missing = sorted(set(values) - found)
  if missing:
    raise ValueError(f"hyper-parameters {missing} are not in the optimizer state; build the "
                     "optimizer with population.inject(factory, name=value) to give each "
                     "member its own")
  return out


def take(tree: Any, index: np.ndarray) -> Any:
  """Rows `index` of every leaf's leading (member) axis."""
  index = np.asarray(index)
  return jax.tree.map(lambda a: a[index], tree)


# --------------------------------------------------------------------------
# Data for members.


@dataclasses.dataclass
class Slots:
  """The population's current layout: slot i trains member ids[i].

  Slots i >= count are padding: they repeat a live member and their results
  are discarded (a data source still fills them, with anything of the right
  shape, without advancing that member's stream).
  """
  ids: np.ndarray
  count: int
  step: int


class PoolData:
  """Members train on subsets of shared device-resident data pools.

  pools: {name: [num_pools, M, ...]} training arrays; member j uses rows
  0..num_rows[j]-1 of pool pool_index[j] and draws minibatches of
  `batch_size` rows with replacement from its own numpy Generator (entropy
  seeds[j]), so its batches do not depend on the members it shares a
  population with. eval_pools: {name: [num_pools, T, ...]}, member j is
  evaluated on all of pool pool_index[j]. The gathers run on the devices; only
  indices travel from the host.
  """

  def __init__(self, pools: Mapping[str, Any], pool_index: Sequence[int],
               num_rows: Sequence[int], seeds: Sequence[Any], batch_size: int, mesh: Mesh,
               eval_pools: Optional[Mapping[str, Any]] = None):
    self.pool_index = np.asarray(pool_index, np.int32)
    self.num_rows = np.asarray(num_rows, np.int64)
    rows = min(np.shape(v)[1] for v in pools.values())
    if np.any(self.num_rows < 1) or np.any(self.num_rows > rows):
      raise ValueError(f"num_rows must lie in [1, {rows}], got {self.num_rows}")
    self.batch_size = int(batch_size)
    self.gens = [np.random.default_rng([int(v) for v in np.atleast_1d(s)]) for s in seeds]
    replicated = NamedSharding(mesh, P())
    self.pools = jax.device_put({k: np.asarray(v) for k, v in pools.items()}, replicated)
    self.eval_pools = None if eval_pools is None else jax.device_put(
        {k: np.asarray(v) for k, v in eval_pools.items()}, replicated)
    by_member = NamedSharding(mesh, P(MEMBER_AXES))
    self._gather = jax.jit(lambda pools, p, i: {k: v[p[:, None, None], i]
                                                for k, v in pools.items()},
                           out_shardings=by_member)
    self._eval = jax.jit(lambda pools, p: {k: v[p] for k, v in pools.items()},
                         out_shardings=by_member)

  def __len__(self) -> int:
    return len(self.pool_index)

  def train_batches(self, slots: Slots, num_steps: int) -> dict[str, jax.Array]:
    """{name: [size, num_steps, batch_size, ...]} for the slots."""
    idx = np.zeros((len(slots.ids), num_steps, self.batch_size), np.int32)
    for i, member in enumerate(slots.ids[:slots.count]):
      idx[i] = self.gens[member].integers(0, self.num_rows[member], (num_steps, self.batch_size))
    return self._gather(self.pools, self.pool_index[slots.ids], idx)

  def eval_batches(self, slots: Slots) -> dict[str, jax.Array]:
    if self.eval_pools is None:
      raise ValueError("PoolData has no eval_pools")
    return self._eval(self.eval_pools, self.pool_index[slots.ids])


class IteratorData:
  """Each member draws host batches from its own iterator (e.g. a
  `data_pipelines.batching.BatchIterator`), exactly as a single run would.

  eval_sets: member j's eval batch ({name: array}), if members are evaluated.
  """

  def __init__(self, iterators: Sequence[Any],
               eval_sets: Optional[Sequence[Mapping[str, Any]]] = None):
    self.iterators = list(iterators)
    self.eval_sets = None if eval_sets is None else list(eval_sets)

  def train_batches(self, slots: Slots, num_steps: int) -> dict[str, np.ndarray]:
    rows = [[next(self.iterators[m]) for _ in range(num_steps)]
            for m in slots.ids[:slots.count]]
    rows += [rows[0]] * (len(slots.ids) - slots.count)
    return {k: np.stack([np.stack([b[k] for b in row]) for row in rows]) for k in rows[0][0]}

  def eval_batches(self, slots: Slots) -> dict[str, np.ndarray]:
    if self.eval_sets is None:
      raise ValueError("IteratorData has no eval_sets")
    sets = [self.eval_sets[m] for m in slots.ids]
    return {k: np.stack([np.asarray(s[k]) for s in sets]) for k in sets[0]}


# --------------------------------------------------------------------------
# The population.


@dataclasses.dataclass
class PopulationResult:
  """Per-member outcome (numpy, leading axis R = members)."""
  reached: np.ndarray  # bool: the target was reached at an evaluation.
  reached_step: np.ndarray  # int: the step of that evaluation; -1 if never.
  steps_run: np.ndarray  # int: steps trained before the member left.
  eval_metrics: dict[str, np.ndarray]  # the member's last evaluation.
  best: np.ndarray  # best target metric seen (NaN without a target).
  train_metrics: dict[str, np.ndarray]  # the member's last step's metrics.
  history: dict[str, np.ndarray]  # [num_evals, R]; NaN once a member left.
  params: Optional[Any]  # each member's params when it left (keep_params).
  stop_reason: Optional[str] = None


class _SlotBatches:
  """The loop's batch iterator: asks the data source for the current slots."""

  def __init__(self, run: "_Run"):
    self.run = run

  def __iter__(self):
    return self

  def __next__(self):
    run = self.run
    return run.train_batches(Slots(run.ids, run.count, run.loop.step), run.pop.steps_per_call)


class _Run:
  """One `Population.train`: slot bookkeeping and the evaluate-and-drop hook."""

  def __init__(self, pop, state, members, train_batches, eval_batches, budgets, target,
               keep_params, on_eval):
    self.pop, self.train_batches, self.eval_batches = pop, train_batches, eval_batches
    self.budgets, self.target, self.keep_params, self.on_eval = budgets, target, \
        keep_params, on_eval
    self.count = members
    self.size = _round_up(members, pop.shards)
    self.ids = np.concatenate([np.arange(members), np.zeros(self.size - members, int)])
    self.state = pop.place(take(jax.device_get(state), self.ids))  # padded on the host
    self.reached = np.zeros(members, bool)
    self.reached_step = np.full(members, -1)
    self.steps_run = np.zeros(members, int)
    self.best = np.full(members, -np.inf if target and target[2] == "max" else np.inf)
    self.eval_metrics: dict[str, np.ndarray] = {}
    self.train_metrics: dict[str, np.ndarray] = {}
    self.history: dict[str, list] = {}
    self.params = None
    self.loop = None

  def _record(self, table, name, ids, values, members):
    if name not in table:
      table[name] = np.full(members, np.nan)
    table[name][ids] = values

  def evaluate(self, info: loop_lib.StepInfo) -> None:
    if info.final and info.loop.preempted:
      return
    members = len(self.reached)
    count, ids, step = self.count, self.ids[:self.count], info.step
    metrics = {}
    if self.eval_batches is not None:
      batch = self.eval_batches(Slots(self.ids, count, step))
      metrics = jax.device_get(self.pop.evaluate(info.state.params, batch))
      metrics = {k: np.asarray(v)[:count] for k, v in metrics.items()}
    if info.device_metrics:
      for k, v in info.metrics.items():
        self._record(self.train_metrics, k, ids, np.asarray(v)[:count], members)
    row_count = len(next(iter(self.history.values()))) if self.history else 0
    for k, v in metrics.items():
      self._record(self.eval_metrics, k, ids, v, members)
      self.history.setdefault(k, [np.full(members, np.nan)] * row_count)
    for k in self.history:
      row = np.full(members, np.nan)
      if k in metrics:
        row[ids] = metrics[k]
      self.history[k].append(row)
    self.steps_run[ids] = step
    if self.on_eval is not None:
      self.on_eval(step, ids, metrics)
    done = step >= self.budgets[ids]
    if self.target is not None:
      name, threshold, mode = self.target
      value = metrics[name]
      won = value >= threshold if mode == "max" else value <= threshold
      self.best[ids] = (np.maximum if mode == "max" else np.minimum)(self.best[ids], value)
      self.reached[ids[won]] = True
      self.reached_step[ids[won]] = step
      done = done | won
    if self.keep_params and done.any():
      got = take(jax.device_get(info.state.params), np.flatnonzero(done))
      if self.params is None:
        self.params = jax.tree.map(lambda a: np.zeros((members,) + a.shape[1:], a.dtype), got)
      self.params = jax.tree.map(lambda all_, a: _put_rows(all_, ids[done], a), self.params,
                                 got)
    live = np.flatnonzero(~done)
    if not live.size:
      self.count = 0
      info.loop.request_stop("every member finished")
    elif live.size < count:
      self.count = live.size
      self.size = min(self.size, bucket(self.count, self.pop.shards))
      order = np.full(self.size, live[0])
      order[:self.count] = live
      info.loop.state = self.pop.take(info.state, order)
      self.ids = self.ids[order]


def _put_rows(all_rows: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
  all_rows[rows] = values
  return all_rows


class Population:
  """`model` trained as a population on `mesh` with optimizer `tx`.

  example_batch: one member's batch for one step (shapes only). The jitted
  population step, evaluation and compaction are built once and reused by
  every `train` call (one compilation per population size).
  """

  def __init__(self, model: Any, tx: optax.GradientTransformation, mesh: Mesh,
               example_batch: Mapping[str, Any], *, steps_per_call: int = 1,
               rules: Any = sharding_lib.DEFAULT_RULES, num_microbatches: int = 1):
    self.model = contract.as_model(model)
    self.tx, self.mesh = tx, mesh
    self.steps_per_call = int(steps_per_call)
    self.shards = num_shards(mesh)
    self.rules = member_rules(rules)
    self.example_batch = {k: np.zeros(np.shape(v), np.asarray(v).dtype)
                          for k, v in example_batch.items()}
    _, single = train_state_lib.state_shardings(self.model, tx, self.example_batch, mesh,
                                                self.rules)
    self.state_shardings = jax.tree.map(lambda s: _stacked(s, mesh), single)
    self.by_member = NamedSharding(mesh, P(MEMBER_AXES))
    step = train_step_lib.make_train_step(self.model, tx, num_microbatches=num_microbatches)
    step = train_step_lib.scan_steps(step, self.steps_per_call)
    self._step = jax.jit(jax.vmap(step, spmd_axis_name=MEMBER_AXES),
                         in_shardings=(self.state_shardings, self.by_member),
                         out_shardings=(self.state_shardings, self.by_member),
                         donate_argnums=(0,))
    model_ = self.model
    self._evaluate = jax.jit(
        jax.vmap(lambda p, b: train_step_lib.means(model_.loss(p, b)),
                 spmd_axis_name=MEMBER_AXES),
        in_shardings=(self.state_shardings.params, self.by_member), out_shardings=self.by_member)
    self._take = jax.jit(take_rows, out_shardings=self.state_shardings)
    self._abstract_params = jax.eval_shape(
        lambda: nn.meta.unbox(model_.init(jax.random.PRNGKey(0), self.example_batch)))
    example = self.example_batch

    def one(seed, p):
      param_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
      if p is None:
        p = nn.meta.unbox(model_.init(param_rng, example))
      return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                        rng=state_rng)

    self._init_seeds = jax.jit(jax.vmap(lambda seed: one(seed, None)))
    self._init_params = jax.jit(jax.vmap(one))

  def _ctx(self):
    return _contexts(self.mesh, self.rules)

  # -- state --------------------------------------------------------------

  def init(self, *, params: Any = None, seeds: Optional[Sequence[int]] = None,
           hparams: Optional[Mapping[str, Sequence[float]]] = None) -> TrainState:
    """The stacked train state of R members (unpadded, on the default device).

    params: given initial parameters, stacked on a leading axis of R (e.g. a
      study's own initialiser); otherwise `model.init(PRNGKey(seeds[j]))`.
    seeds: member j's train-state key is split from PRNGKey(seeds[j]) exactly as
      `train_state.create_sharded_state(seed=seeds[j])` splits it, so member j
      starts as a single run with `config.seed = seeds[j]` (default 0..R-1).
    hparams: {name: [R]} per-member values of injected hyper-parameters.
    """
    if params is None and seeds is None:
      raise ValueError("give the members' initial params or their seeds")
    members = len(seeds) if seeds is not None else len(jax.tree.leaves(params)[0])
    seeds = np.arange(members) if seeds is None else np.asarray(seeds)
    values = {k: np.asarray(v, np.float64) for k, v in (hparams or {}).items()}
    for k, v in values.items():
      if v.shape != (members,):
        raise ValueError(f"hparams[{k!r}] has shape {v.shape}; need ({members},)")
    if values:  # checked on shapes alone, before anything compiles
      abstract = jax.eval_shape(self.tx.init, self._abstract_params)
      _set_hyperparams(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract),
                       {k: v[0] for k, v in values.items()})
    with self._ctx():
      if params is None:
        state = self._init_seeds(np.asarray(seeds, np.int32))
      else:
        state = self._init_params(np.asarray(seeds, np.int32), params)
    if values:
      state = state.replace(opt_state=_set_hyperparams(state.opt_state, values))
    return state

  def place(self, state: TrainState) -> TrainState:
    """A stacked state (size a multiple of the shards) in the population layout."""
    size = len(jax.tree.leaves(state.params)[0])
    if size % self.shards:
      raise ValueError(f"population size {size} is not a multiple of the {self.shards} "
                       "member shards")
    return jax.device_put(state, self.state_shardings)

  def take(self, state: TrainState, order: np.ndarray) -> TrainState:
    return self._take(state, np.asarray(order, np.int32))

  # -- steps --------------------------------------------------------------

  def step(self, state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict]:
    """steps_per_call steps of every member: batch leaves [size, steps_per_call, ...]
    (or [size, ...] when steps_per_call is 1). Metrics: the last step's, [size]."""
    if self.steps_per_call == 1:
      batch = {k: v[:, 0] if np.ndim(v) == np.ndim(self.example_batch[k]) + 2 else v
               for k, v in batch.items()}
    with self._ctx():
      return self._step(state, batch)

  def evaluate(self, params: Any, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Each member's count-weighted means of its loss sums on its batch [size, ...]."""
    with self._ctx():
      return self._evaluate(params, batch)

  # -- training -----------------------------------------------------------

  def train(self, state: TrainState,
            train_batches: Callable[[Slots, int], Mapping[str, Any]], *,
            total_steps: int, eval_every: Optional[int] = None,
            eval_batches: Optional[Callable[[Slots], Mapping[str, Any]]] = None,
            budgets: Optional[Sequence[int]] = None,
            target: Optional[tuple] = None, keep_params: bool = False,
            on_eval: Optional[Callable[[int, np.ndarray, dict], None]] = None,
            hooks: Sequence[tuple[Callable[[loop_lib.StepInfo], Any], int]] = (),
            ) -> PopulationResult:
    """Trains the R members of `state` (from `init`) through the common loop.

    train_batches(slots, steps_per_call) -> {name: [size, steps_per_call, ...]}
    eval_batches(slots) -> {name: [size, ...]}: each member's eval batch.
    Every `eval_every` steps (a multiple of steps_per_call; default
    steps_per_call) and at the end, every live member is evaluated; it leaves
    once its step budget (budgets[j], default total_steps) is spent or, with
    target = (metric, threshold[, "max" | "min"]), once its eval metric
    reached the threshold. on_eval(step, member ids, eval metrics) is called
    after each evaluation. `hooks`: extra (fn(info), every) loop hooks.
    """
    members = len(jax.tree.leaves(state.params)[0])
    eval_every = int(eval_every or self.steps_per_call)
    if eval_every % self.steps_per_call:
      raise ValueError(f"eval_every={eval_every} must be a multiple of steps_per_call="
                       f"{self.steps_per_call}")
    budgets = np.full(members, int(total_steps)) if budgets is None else np.asarray(budgets)
    if target is not None:
      target = tuple(target) + (("max",) if len(target) == 2 else ())
      if target[2] not in ("max", "min"):
        raise ValueError(f"target mode {target[2]!r} must be 'max' or 'min'")
      if eval_batches is None:
        raise ValueError("a target needs eval_batches")
    run = _Run(self, state, members, train_batches, eval_batches, budgets, target,
               keep_params, on_eval)
    loop = loop_lib.Loop(self.step, run.state, _SlotBatches(run),
                         total_steps=int(budgets.max()), steps_per_call=self.steps_per_call,
                         put_batch=lambda b: jax.device_put(b, self.by_member),
                         handle_signals=False)
    run.loop = loop
    loop.add_hook(run.evaluate, every=eval_every, at_end=True, name="evaluate_members")
    for fn, every in hooks:
      loop.add_hook(fn, every=int(every))
    result = loop.run()
    if keep_params and run.count:  # members still live at the end (stopped early)
      ids = run.ids[:run.count]
      got = take(jax.device_get(result.state.params), np.arange(run.count))
      if run.params is None:
        run.params = jax.tree.map(lambda a: np.zeros((members,) + a.shape[1:], a.dtype), got)
      run.params = jax.tree.map(lambda all_, a: _put_rows(all_, ids, a), run.params, got)
    if result.stop_reason not in (None, "every member finished"):
      logging.info("population stopped: %s", result.stop_reason)
    history = {k: np.array(v).reshape(-1, members) for k, v in run.history.items()}
    best = run.best if target is not None else np.full(members, np.nan)
    return PopulationResult(run.reached, run.reached_step, run.steps_run, run.eval_metrics,
                            best, run.train_metrics, history, run.params, result.stop_reason)


def take_rows(tree: Any, index: jax.Array) -> Any:
  return jax.tree.map(lambda a: a[index], tree)


@contextlib.contextmanager
def _contexts(mesh: Mesh, rules):
  """The mesh and the member-level logical rules (for Flax activation constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
