"""tools.bench_shampoo: interleaved, donated timing and its summary."""
from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizers import shampoo
from tools import bench_shampoo as bench


class _FakeStepper:
  """Records the global order of steps; step k of `name` 'takes' cost(k)."""

  def __init__(self, name, log, cost):
    self.name, self.log, self.cost, self.steps = name, log, cost, 0

  def step(self):
    self.steps += 1
    self.log.append((self.name, self.steps))
    return self.cost(self.steps)


class InterleavingTest(absltest.TestCase):

  def test_rounds_rotate_and_time_one_root_and_one_plain_step(self):
    log = []
    steppers = {n: _FakeStepper(n, log, lambda k: 1.0) for n in ("a", "b", "c")}
    times = bench.interleaved_step_times(steppers, rounds=5)
    after_warmup = log[6:]
    turns = [after_warmup[i:i + 3] for i in range(0, len(after_warmup), 3)]
    firsts = [turns[3 * r][0][0] for r in range(5)]
    self.assertEqual(firsts, ["a", "b", "c", "a", "b"])
    for turn in turns:  # one untimed step, then two of the same optimizer
      self.assertEqual(len({n for n, _ in turn}), 1)
    for n in steppers:
      self.assertLen(times[n], 5)
      for turn in times[n]:
        self.assertEqual(sorted(k % 2 for k, _ in turn), [0, 1])

  def test_ratios_use_the_round_s_own_reference(self):
    # Round r: adamw takes 10 (r + 1) ms; x's root 20x and plain 2x that, so
    # every round's ratio is exact although the times drift 5-fold.
    times = {"adamw": [], "x": []}
    for r in range(5):
      t = 0.01 * (r + 1)
      times["adamw"].append([(2 * r + 1, t), (2 * r + 2, t)])
      times["x"].append([(2 * r + 3, 20 * t), (2 * r + 4, 2 * t)])
    row = bench.ratios(times, "x", [1, 10])
    self.assertAlmostEqual(row["ratio_f1"]["median"], 20.0)
    self.assertAlmostEqual(row["ratio_f1"]["max"] - row["ratio_f1"]["min"], 0.0)
    self.assertAlmostEqual(row["ratio_f10"]["median"], (20 + 9 * 2) / 10)
    self.assertEqual(row["ratio_f10"]["n"], 5)
    self.assertAlmostEqual(row["root_s"], 20 * 0.03)

  def test_spread(self):
    s = bench.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    self.assertEqual((s["median"], s["min"], s["max"], s["q25"], s["q75"]),
                     (3.0, 1.0, 5.0, 2.0, 4.0))


class StepperTest(absltest.TestCase):

  def test_step_is_update_and_apply_with_donation(self):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    grads = jax.tree.map(lambda p: 0.5 * p + 0.1, params)
    for tx in (optax.adamw(0.1, weight_decay=0.1),
               shampoo(0.1, block_size=4, preconditioning_frequency=2)):
      s = bench.Stepper(tx, params, grads)
      state, p = tx.init(params), params
      for _ in range(3):
        old_params, old_state = s.params, s.state
        self.assertGreater(s.step(), 0.0)
        self.assertTrue(all(x.is_deleted() for x in jax.tree.leaves((old_params, old_state))))
        u, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, u)
      chex.assert_trees_all_close(s.params, p, rtol=1e-5, atol=1e-6)
      self.assertEqual(s.steps, 3)
      self.assertFalse(params["w"].is_deleted())


if __name__ == "__main__":
  absltest.main()
