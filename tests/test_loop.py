"""The common loop and its hooks: when hooks fire, stopping, throughput, scanned steps."""
import itertools
import json
import os
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest, parameterized

import lm_testlib
from data_pipelines import batching
from framework import hooks as hooks_lib
from framework import loop as loop_lib
from framework import metrics as metrics_lib
from framework import optim
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib
from framework import trainer
from models import registry


def _counting_step(state, batch):
  """state = number of examples seen; metrics carry the batch's own count."""
  count = jnp.sum(batch["w"])
  return state + count, {"loss": 1.0 / (1.0 + state), "count": count}


def _batches(weights_per_step):
  for w in weights_per_step:
    yield {"w": jnp.asarray(w, jnp.float32)}


class LoopTest(parameterized.TestCase):

  @parameterized.parameters((1, [3, 6, 9, 10]), (2, [4, 6, 10]), (4, [4, 8, 12]))
  def test_hooks_fire_when_their_period_is_crossed(self, per_call, want):
    total = 10
    loop = loop_lib.Loop(_counting_step, jnp.zeros(()), _batches(itertools.repeat([1.0])),
                         total_steps=total, steps_per_call=per_call, handle_signals=False)
    seen, ends = [], []
    loop.add_hook(lambda info: seen.append(info.step), every=3, at_end=True)
    loop.add_hook(lambda info: ends.append((info.step, info.final)), every=100, at_end=True)
    result = loop.run()
    # per_call=2 -> steps 2,4,6,8,10: periods of 3 are crossed at 4 (3), 6, 10 (9).
    # per_call=4 -> steps 4,8,12 (the loop stops once total is reached).
    self.assertEqual(seen, want)
    self.assertEqual(ends, [(result.step, True)])
    self.assertGreaterEqual(result.step, total)

  def test_request_stop_stops_before_the_next_step(self):
    calls = []

    def step(state, batch):
      calls.append(1)
      return _counting_step(state, batch)

    loop = loop_lib.Loop(step, jnp.zeros(()), _batches(itertools.repeat([1.0])),
                         total_steps=100, handle_signals=False)
    loop.add_hook(hooks_lib.EarlyStop("loss", 0.21, mode="min"), every=1)
    result = loop.run()
    # step k reports loss 1 / k: first <= 0.21 at step 5.
    self.assertEqual(result.step, 5)
    self.assertEqual(len(calls), 5)
    self.assertIn("loss", result.stop_reason)

  def test_metrics_are_fetched_only_when_read(self):
    loop = loop_lib.Loop(_counting_step, jnp.zeros(()), _batches(itertools.repeat([1.0])),
                         total_steps=6, handle_signals=False)
    with mock.patch.object(jax, "device_get", wraps=jax.device_get) as get:
      loop.add_hook(lambda info: info.metrics, every=3)
      loop.run()
    self.assertEqual(get.call_count, 2)  # steps 3 and 6 (the result reuses step 6's)

  def test_throughput_counts_the_steps_own_count(self):
    """Tokens/s comes from the step's count (weights), not from the batch shape."""
    workdir = self.create_tempdir().full_path
    writer = metrics_lib.MetricWriter(workdir)
    log = hooks_lib.LogMetrics(writer)
    weights = [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]] * 2  # 6 of 16 slots count
    loop = loop_lib.Loop(_counting_step, jnp.zeros(()), _batches(weights), total_steps=4,
                         handle_signals=False)
    loop.add_hook(log.accumulate, every=1)
    loop.add_hook(log, every=4)
    with mock.patch.object(hooks_lib.time, "perf_counter", side_effect=[2.0, 2.0]):
      log._t0 = 0.0
      loop.run()
    writer.close()
    records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    rate = [r["perf/tokens_per_s"] for r in records if "perf/tokens_per_s" in r]
    self.assertEqual(rate, [3.0])  # 6 counted examples in 2 s


class ScanStepsTest(absltest.TestCase):

  def test_scanned_steps_equal_single_steps(self):
    config = lm_testlib.tiny_config()
    model = registry.build(config.model)
    arrays = lm_testlib.synthetic_arrays(num=16)
    tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, 20))
    step = train_step_lib.make_train_step(model, tx)
    state0 = train_state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=jax.tree.map(
            lambda x: x.unbox() if hasattr(x, "unbox") else x,
            model.init(jax.random.PRNGKey(0), arrays),
            is_leaf=lambda x: hasattr(x, "unbox")),
        opt_state=None, rng=jax.random.PRNGKey(1))
    state0 = state0.replace(opt_state=tx.init(state0.params))
    batches = [{k: v[i * 4:(i + 1) * 4] for k, v in arrays.items()} for i in range(3)]
    single = state0
    for b in batches:
      single, m_single = jax.jit(step)(single, b)
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    scanned, m_scan = jax.jit(train_step_lib.scan_steps(step, 3))(state0, stacked)
    self.assertEqual(int(scanned.step), 3)
    np.testing.assert_allclose(float(m_scan["loss"]), float(m_single["loss"]), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 scanned.params, single.params)
    # Full batch: the same batch reused k times.
    full, _ = jax.jit(train_step_lib.scan_steps(step, 2, same_batch=True))(state0, batches[0])
    ref = state0
    for _ in range(2):
      ref, _ = jax.jit(step)(ref, batches[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 full.params, ref.params)


class TrainerStepsPerCallTest(absltest.TestCase):

  def test_steps_per_call_trains_like_single_steps(self):
    def run(per_call):
      config = lm_testlib.tiny_config(total_steps=4, log_every=2, eval_every=10**6,
                                      steps_per_call=per_call)
      config.checkpoint.enabled = False
      it = batching.BatchIterator(lm_testlib.synthetic_arrays(), 16, seed=1)
      mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                               ("data", "fsdp", "tensor"))
      result = trainer.train(config, registry.build(config.model), it,
                             workdir=self.create_tempdir().full_path, mesh=mesh)
      return result
    one, two = run(1), run(2)
    self.assertEqual(one.final_step, 4)
    self.assertEqual(two.final_step, 4)
    np.testing.assert_allclose(one.metrics["loss"], two.metrics["loss"], rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
