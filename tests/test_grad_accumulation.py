"""Gradient accumulation over micro-batches equals one big batch; NaN guard."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

import lm_testlib
from framework import mesh as mesh_lib
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib
from framework import trainer
from data_pipelines import batching


class GradAccumulationTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.config = lm_testlib.tiny_config()
    self.model = lm_testlib.tiny_model(self.config)
    arrays = lm_testlib.synthetic_arrays(num=16)
    # Unequal token counts per row, so a mean of micro-batch means would be wrong.
    arrays["weights"][:, 10:] = 0
    arrays["weights"][::3, 4:] = 0
    self.batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    self.params = self.model.init(jax.random.PRNGKey(0), self.batch)
    self.params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, self.params,
                               is_leaf=lambda x: hasattr(x, "value"))

  def test_summed_grads_match_big_batch(self):
    big_g, big_s = train_step_lib.compute_grads(self.model, self.params, self.batch, 1)
    acc_g, acc_s = jax.jit(lambda p, b: train_step_lib.compute_grads(self.model, p, b, 4))(
        self.params, self.batch)
    np.testing.assert_allclose(acc_s["tokens"], big_s["tokens"])
    np.testing.assert_allclose(acc_s["loss"], big_s["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 acc_g, big_g)

  def test_train_step_with_microbatches_matches_on_mesh(self):
    mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 4})
    rules = self.config.sharding.rules
    tx = optax.adamw(1e-2)
    results = []
    for num in (1, 4):
      state, shardings = train_state_lib.create_sharded_state(
          self.model, tx, self.batch, mesh, rules)
      step = train_step_lib.jit_train_step(
          train_step_lib.make_train_step(self.model, tx, num_microbatches=num),
          shardings, mesh, rules, self.batch)
      state, metrics = step(state, sharding_lib.global_batch(
          jax.device_get(self.batch), mesh))
      results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p4, p1)


class NanGuardTest(absltest.TestCase):

  def _run(self, policy):
    config = lm_testlib.tiny_config(total_steps=4, nan_policy=policy, eval_every=10**6)
    config.checkpoint.enabled = False
    arrays = lm_testlib.synthetic_arrays(num=32)
    # Batch 2 (rows 16..31 with no shuffle) carries an out-of-range weight of NaN.
    weights = arrays["weights"].astype(np.float32)
    weights[16:] = np.nan
    arrays["weights"] = weights
    it = batching.BatchIterator(arrays, 16, shuffle=False)
    seen = []
    mesh = mesh_lib.create_mesh({"data": 1}, jax.devices()[:1])
    result = trainer.train(config, lm_testlib.tiny_model(config), it,
                           workdir=self.create_tempdir().full_path, mesh=mesh,
                           step_callback=lambda s, m: seen.append(m))
    return result, seen

  def test_skip_policy_keeps_params_finite(self):
    result, seen = self._run("skip")
    self.assertEqual([m["nonfinite"] for m in seen], [0.0, 1.0, 0.0, 1.0])
    for leaf in jax.tree.leaves(jax.device_get(result.state.params)):
      self.assertTrue(np.all(np.isfinite(leaf)))

  def test_stop_policy_raises(self):
    with self.assertRaisesRegex(trainer.NonFiniteLossError, "step 2"):
      self._run("stop")

  def test_stop_policy_stops_before_the_next_step(self):
    calls = []
    real = trainer.train_step_lib.make_train_step

    def counting(*args, **kwargs):
      step = real(*args, **kwargs)

      def wrapped(state, batch):
        jax.debug.callback(lambda: calls.append(1))
        return step(state, batch)
      return wrapped

    with mock.patch.object(trainer.train_step_lib, "make_train_step", counting):
      with self.assertRaises(trainer.NonFiniteLossError):
        self._run("stop")
    jax.effects_barrier()
    self.assertLen(calls, 2)  # steps 1 and 2 ran; step 3 never did

  def _run_corrupt_optimizer(self, **trainer_overrides):
    """AdamW whose first moment is NaN: finite loss and grads, non-finite update."""
    config = lm_testlib.tiny_config(eval_every=10**6, **trainer_overrides)
    config.checkpoint.enabled = False
    it = batching.BatchIterator(lm_testlib.synthetic_arrays(num=32), 16, shuffle=False)
    mesh = mesh_lib.create_mesh({"data": 1}, jax.devices()[:1])
    start = {}

    def corrupt(state):
      start["params"] = jax.device_get(state.params)
      poison = lambda x: jnp.full_like(x, jnp.nan) if x.ndim else x
      return state.replace(opt_state=jax.tree.map(poison, state.opt_state))

    seen = []
    result = trainer.train(config, lm_testlib.tiny_model(config), it,
                           workdir=self.create_tempdir().full_path, mesh=mesh,
                           init_state=corrupt, step_callback=lambda s, m: seen.append(m))
    return result, seen, start["params"]

  def test_non_finite_update_is_never_applied(self):
    result, seen, params0 = self._run_corrupt_optimizer(total_steps=3, nan_policy="skip",
                                                        max_consecutive_skips=0)
    self.assertTrue(all(np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) for m in seen))
    self.assertEqual([m["nonfinite"] for m in seen], [1.0, 1.0, 1.0])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params), params0)

  def test_nan_learning_rate_update_is_skipped(self):
    config = lm_testlib.tiny_config()
    model = lm_testlib.tiny_model(config)
    batch = {k: jnp.asarray(v[:4]) for k, v in lm_testlib.synthetic_arrays(num=4).items()}
    tx = optax.adamw(lambda step: jnp.nan)
    params = model.init(jax.random.PRNGKey(0), batch)
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                          is_leaf=lambda x: hasattr(x, "unbox"))
    state = train_state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    new, metrics = jax.jit(train_step_lib.make_train_step(model, tx))(state, batch)
    self.assertEqual(float(metrics["nonfinite"]), 1.0)
    jax.tree.map(np.testing.assert_array_equal, new.params, params)

  def test_max_consecutive_skips_stops_with_a_clear_message(self):
    with self.assertRaisesRegex(trainer.NonFiniteLossError,
                                r"3 steps in a row .*max_consecutive_skips=3"):
      self._run_corrupt_optimizer(total_steps=10, nan_policy="skip", max_consecutive_skips=3)


if __name__ == "__main__":
  absltest.main()
