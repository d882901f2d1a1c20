"""Populations (`framework.population`): the vmapped common step over members.

The reference for every member is training it alone: through
`framework.trainer.train` on one device (same seed, learning rate and batch
iterator), or through the plain jitted common step. The population runs on
the 8 fake CPU devices, its member axis split over (data, fsdp).
"""
import ml_collections
import numpy as np
from absl.testing import absltest, parameterized
import jax
import optax

from data_pipelines import batching
from framework import mesh as mesh_lib
from framework import optim
from framework import population
from framework import sharding as sharding_lib
from framework import trainer
from framework import train_step as train_step_lib
from models import registry

MODELS = {
    "sparse_mlp": dict(name="sparse_mlp", width=16, sparsity=3, num_outputs=3, loss="xent"),
    "mlp": dict(name="mlp", hidden_sizes=(16,), num_outputs=3),
}
N_IN, BATCH = 6, 8


def _data(member: int, rows: int = 64):
  """Member j's own classification set: y = argmax of a member-specific linear map."""
  rng = np.random.default_rng(100 + member)
  x = rng.normal(size=(rows, N_IN)).astype(np.float32)
  y = np.argmax(x @ rng.normal(size=(N_IN, 3)), -1).astype(np.int32)
  return {"x": x, "y": y}


def _optimizer():
  return ml_collections.ConfigDict(dict(name="sgd", momentum=0.9, weight_decay=1e-3,
                                        b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0,
                                        kwargs={}))


def _config(seed: int, lr: float, steps: int, steps_per_call: int):
  c = ml_collections.ConfigDict()
  c.seed = seed
  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=1, tensor=1)))
  c.sharding = ml_collections.ConfigDict(dict(rules=sharding_lib.DEFAULT_RULES))
  c.optimizer = _optimizer()
  c.schedule = ml_collections.ConfigDict(dict(name="constant", peak_lr=lr, warmup_steps=0))
  c.trainer = ml_collections.ConfigDict(dict(
      total_steps=steps, num_microbatches=1, log_every=steps, eval_every=steps,
      steps_per_call=steps_per_call, full_batch=False, nan_policy="skip", peak_flops=1.0,
      progress_every_s=1e9, print_progress=False))
  c.checkpoint = ml_collections.ConfigDict(dict(enabled=False, every=steps, keep=1,
                                                async_save=False))
  return c


_CACHE = {}


def _population(name, mesh_shape, steps_per_call):
  """One population per (model, mesh, steps per call), shared by the tests (one
  compilation per population size); members differ in lr via hparams."""
  key = (name, tuple(sorted(mesh_shape.items())), steps_per_call)
  if key not in _CACHE:
    opt = _optimizer()
    tx = population.inject(lambda learning_rate: optim.make_optimizer(opt, learning_rate),
                           learning_rate=0.1)
    example = {k: v[:BATCH] for k, v in _data(0).items()}
    _CACHE[key] = population.Population(registry.build(MODELS[name]), tx,
                                        mesh_lib.create_mesh(mesh_shape), example,
                                        steps_per_call=steps_per_call)
  return _CACHE[key]


def _assert_trees_close(test, a, b, **tol):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  test.assertEqual(len(flat_a), len(flat_b))
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


class PopulationTest(parameterized.TestCase):

  @parameterized.parameters(*sorted(MODELS))
  def test_members_equal_single_trainer_runs(self, name):
    """Seeds, learning rates and data differ per member; 8 devices vs 1 each."""
    seeds, lrs, steps, k = [3, 11], [0.05, 0.2], 20, 5
    pop = _population(name, {"data": 4, "fsdp": 2}, k)
    model = pop.model
    state = pop.init(seeds=seeds, hparams={"learning_rate": lrs})
    data = population.IteratorData([batching.BatchIterator(_data(j), BATCH, seed=j)
                                    for j in range(2)])
    res = pop.train(state, data.train_batches, total_steps=steps, keep_params=True)
    np.testing.assert_array_equal(res.steps_run, [steps] * 2)
    one = jax.devices()[:1]
    for j in range(2):
      single = trainer.train(_config(seeds[j], lrs[j], steps, k), model,
                             batching.BatchIterator(_data(j), BATCH, seed=j),
                             workdir=self.create_tempdir().full_path,
                             mesh=mesh_lib.create_mesh({"data": 1}, one))
      self.assertEqual(single.final_step, steps)
      member = jax.tree.map(lambda a: a[j], res.params)
      _assert_trees_close(self, member, jax.device_get(single.state.params),
                          rtol=2e-5, atol=2e-6)
      np.testing.assert_allclose(res.train_metrics["loss"][j], single.metrics["loss"],
                                 rtol=2e-5)
    # Different learning rates give different members (the state carries them).
    first = jax.tree.leaves(res.params)[0]
    self.assertFalse(np.allclose(first[0], first[1]))

  def test_dropping_members_and_rebucketing_match_plain_steps(self):
    """Members leave at their budgets; the population shrinks 16 -> 8 slots."""
    members, k = 9, 5
    budgets = np.array([10, 20, 30, 40, 50, 60, 60, 60, 10])
    pop = _population("sparse_mlp", {"data": 8}, k)
    model = pop.model
    state = pop.init(seeds=np.arange(members))
    state = jax.device_get(state)  # train donates its copy
    data = population.IteratorData(
        [batching.BatchIterator(_data(j), BATCH, seed=j) for j in range(members)],
        eval_sets=[_data(j) for j in range(members)])
    sizes = []
    res = pop.train(state, data.train_batches, total_steps=60, budgets=budgets,
                    eval_every=10, eval_batches=data.eval_batches, keep_params=True,
                    hooks=[(lambda info: sizes.append(len(info.state.step)), 10)])
    self.assertEqual(sorted(set(sizes), reverse=True), [16, 8])
    self.assertEqual(res.stop_reason, "every member finished")
    np.testing.assert_array_equal(res.steps_run, budgets)
    acc = res.history["accuracy"]
    self.assertEqual(acc.shape, (6, members))
    for j in range(members):
      evals = budgets[j] // 10
      self.assertTrue(np.all(np.isfinite(acc[:evals, j])))
      self.assertTrue(np.all(np.isnan(acc[evals:, j])))
    # Reference: the plain jitted common step, member by member, from the
    # member's initial state (the init itself is checked against the trainer above).
    tx = optim.make_optimizer(_optimizer(), optax.constant_schedule(0.1))
    step = jax.jit(train_step_lib.make_train_step(model, tx))
    evaluate = jax.jit(lambda p, b: train_step_lib.means(model.loss(p, b)))
    for j in range(members):
      ref = jax.tree.map(lambda a: a[j], state)
      ref = ref.replace(opt_state=tx.init(ref.params))
      it = batching.BatchIterator(_data(j), BATCH, seed=j)
      for _ in range(budgets[j]):
        ref, _ = step(ref, next(it))
      _assert_trees_close(self, jax.tree.map(lambda a: a[j], res.params),
                          jax.device_get(ref.params), rtol=2e-5, atol=2e-6)
      np.testing.assert_allclose(res.eval_metrics["accuracy"][j],
                                 float(evaluate(ref.params, _data(j))["accuracy"]), atol=1e-6)

  def test_target_drops_members_and_records_the_step(self):
    """A member leaves at the first evaluation where its metric reached the target."""
    pop = _population("sparse_mlp", {"data": 8}, 5)
    members = 4
    data = population.IteratorData(
        [batching.BatchIterator(_data(j), BATCH, seed=j) for j in range(members)],
        eval_sets=[_data(j) for j in range(members)])
    state = pop.init(seeds=np.arange(members), hparams={"learning_rate": [0.3] * members})
    res = pop.train(state, data.train_batches, total_steps=200,
                    eval_every=10, eval_batches=data.eval_batches,
                    target=("accuracy", 0.9))
    acc = res.history["accuracy"]
    for j in range(members):
      hits = np.flatnonzero(acc[:, j] >= 0.9)
      if res.reached[j]:
        self.assertEqual(res.reached_step[j], 10 * (hits[0] + 1))
        self.assertEqual(res.steps_run[j], res.reached_step[j])
        self.assertTrue(np.all(np.isnan(acc[hits[0] + 1:, j])))
      else:
        self.assertEmpty(hits)
        self.assertEqual(res.steps_run[j], 200)
    self.assertTrue(res.reached.any())
    np.testing.assert_allclose(res.best, np.nanmax(acc, 0))

  def test_pool_data_draws_each_members_own_rows(self):
    mesh = mesh_lib.create_mesh({"data": 8})
    pools = {"x": np.arange(2 * 50 * 3, dtype=np.float32).reshape(2, 50, 3),
             "y": np.arange(100, dtype=np.float32).reshape(2, 50)}
    data = population.PoolData(pools, pool_index=[1, 0, 1], num_rows=[5, 50, 20],
                               seeds=[[0], [1], [2]], batch_size=4, mesh=mesh,
                               eval_pools={"y": pools["y"]})
    slots = population.Slots(np.array([0, 1, 2, 0, 0, 0, 0, 0]), 3, 0)
    got = jax.device_get(data.train_batches(slots, 6))
    self.assertEqual(got["x"].shape, (8, 6, 4, 3))
    for slot, (pool, rows, seed) in enumerate(((1, 5, 0), (0, 50, 1), (1, 20, 2))):
      idx = np.random.default_rng([seed]).integers(0, rows, (6, 4))
      np.testing.assert_array_equal(got["y"][slot], pools["y"][pool][idx])
      np.testing.assert_array_equal(got["x"][slot], pools["x"][pool][idx])
    np.testing.assert_array_equal(jax.device_get(data.eval_batches(slots))["y"][2],
                                  pools["y"][1])
    with self.assertRaises(ValueError):
      population.PoolData(pools, [0], [51], [[0]], 4, mesh)

  def test_hyperparameters_need_an_injected_optimizer(self):
    model = registry.build(MODELS["sparse_mlp"])
    mesh = mesh_lib.create_mesh({"data": 8})
    example = {k: v[:BATCH] for k, v in _data(0).items()}
    plain = population.Population(model, optax.sgd(0.1), mesh, example)
    with self.assertRaisesRegex(ValueError, "inject"):
      plain.init(seeds=[0, 1], hparams={"learning_rate": [0.1, 0.2]})
    pop = _population("sparse_mlp", {"data": 8}, 5)
    with self.assertRaisesRegex(ValueError, "shape"):
      pop.init(seeds=[0, 1, 2, 3], hparams={"learning_rate": [0.1]})
    with self.assertRaisesRegex(ValueError, "momentum"):
      pop.init(seeds=[0, 1, 2, 3], hparams={"momentum": [0.1] * 4})
    lrs = [0.1, 0.2, 0.3, 0.4]
    state = pop.init(seeds=[0, 1, 2, 3], hparams={"learning_rate": lrs})
    np.testing.assert_allclose(state.opt_state.hyperparams["learning_rate"], lrs, rtol=1e-6)
    # Seeds give the members distinct initial parameters.
    w = np.asarray(state.params["w"])
    self.assertFalse(np.allclose(w[0], w[1]))

  def test_bucket_and_member_rules(self):
    self.assertEqual([population.bucket(c, 8) for c in (1, 8, 9, 16, 17)], [8, 8, 16, 16, 32])
    self.assertEqual(population.bucket(3, 1), 4)
    rules = dict(population.member_rules(sharding_lib.DEFAULT_RULES))
    self.assertIsNone(rules["activation_batch"])  # (data, fsdp) belong to the members
    self.assertIsNone(rules["embed"])
    self.assertEqual(rules["mlp"], "tensor")


if __name__ == "__main__":
  absltest.main()
