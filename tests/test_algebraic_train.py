"""Training on the algebraic tasks: loss, tiny runs and the runner end to end."""
import json
import os
import tempfile

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from experiments import algebraic as runner
from experiments.configs import group_s3
from experiments.configs import modadd_small
from experiments.configs import parity_10_4


def _np_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


class CrossEntropyTest(absltest.TestCase):

  def test_matches_log_softmax(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 5)) * 3
    labels = rng.integers(0, 5, size=16)
    got = runner.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(got),
                               _np_cross_entropy(logits, labels), rtol=1e-5,
                               atol=1e-6)

  def test_accurate_for_large_margins(self):
    # Margins 40 and 60: the loss is ~e^-40, which float32 log-softmax rounds
    # to 0; the log1p form keeps it (reference: sum_j exp(-margin_j)).
    logits = jnp.asarray([[40.0, 0.0, -5.0], [0.0, 60.0, 1.0]])
    labels = jnp.asarray([0, 1])
    got = np.asarray(runner.cross_entropy(logits, labels), np.float64)
    ref = np.array([np.exp(-40.0) + np.exp(-45.0), np.exp(-60.0) +
                    np.exp(-59.0)])
    np.testing.assert_allclose(got, ref, rtol=1e-4)

  def test_lambda_schedule(self):
    tc = runner.default_config().train
    tc.steps, tc.lambda_start, tc.lambda_end = 100, 1e-2, 1e-6
    tc.lambda_hold, tc.lambda_decay_end = 0.5, 0.9
    np.testing.assert_allclose(float(runner.lambda_at(10, tc)), 1e-2)
    np.testing.assert_allclose(float(runner.lambda_at(70, tc)), 1e-4,
                               rtol=1e-4)
    for step in (90, 100):
      np.testing.assert_allclose(float(runner.lambda_at(step, tc)), 1e-6,
                                 rtol=1e-4)
    # Traced (in-jit) and numpy evaluation agree.
    self.assertAlmostEqual(float(runner.lambda_at(jnp.asarray(80), tc)),
                           float(runner.lambda_at(np.float64(80), tc)),
                           delta=1e-9)


def _tiny(config, steps):
  config.train.steps = steps
  config.train.log_every = steps // 4
  config.train.early_steps = 0
  config.progress = False
  return config


class TrainTest(absltest.TestCase):
  """Tiny end-to-end runs through `run(config, workdir)`."""

  def test_modular_addition_tiny_reaches_max_margin(self):
    config = _tiny(modadd_small.get_config(), 2000)
    config.p = 5
    config.model.width = 32
    with tempfile.TemporaryDirectory() as workdir:
      summary = runner.run(config, workdir)
      for name in ("report.md", "margin_vs_step.png", "fourier.png",
                   "metrics.jsonl", "summary.json", "params.npz"):
        self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
      self.assertTrue(any("train/margin_fraction" in r for r in records))
      with open(os.path.join(workdir, "report.md")) as f:
        self.assertIn("fraction of max", f.read())
    self.assertEqual(summary["accuracy"], 1.0)
    self.assertGreater(summary["margin_fraction"], 0.97)
    self.assertLessEqual(summary["margin_fraction"], 1.0 + 1e-4)
    self.assertTrue(summary["all_frequencies_used"])
    self.assertGreater(summary["min_max_power_active"], 0.95)
    self.assertLess(summary["max_phase_error_active"], 0.2)

  def test_parity_tiny(self):
    config = _tiny(parity_10_4.get_config(), 2000)
    config.parity.n, config.parity.k = 6, 2
    config.model.width = 8
    with tempfile.TemporaryDirectory() as workdir:
      summary = runner.run(config, workdir)
      self.assertTrue(os.path.exists(os.path.join(workdir,
                                                  "parity_support.png")))
    self.assertEqual(summary["accuracy"], 1.0)
    self.assertGreater(summary["margin_fraction"], 0.95)
    self.assertGreater(summary["min_support_fraction_active"], 0.95)

  def test_group_s3_tiny(self):
    config = _tiny(group_s3.get_config(), 400)
    config.model.width = 24
    with tempfile.TemporaryDirectory() as workdir:
      summary = runner.run(config, workdir)
      self.assertTrue(os.path.exists(os.path.join(workdir, "irreps.png")))
    self.assertAlmostEqual(summary["max_margin"],
                           2 / (3 * np.sqrt(18) * (1 + 2 ** 2.5)), places=9)
    self.assertGreater(summary["margin_fraction"], 0.5)
    self.assertEqual(summary["irrep_dims"], [1, 1, 2])
    self.assertGreater(summary["min_irrep_share_active"], 0.9)

  def test_minibatch_normalized_gd_runs(self):
    config = _tiny(modadd_small.get_config(), 200)
    config.p = 5
    config.model.width = 16
    config.train.batch_size = 10
    config.train.optimizer = "normalized_gd"
    config.train.lr = 0.05
    task = runner.build_task(config)
    _, history, _ = runner.train(config, task, progress=False)
    self.assertLen(history, 4)
    self.assertTrue(np.isfinite(history[-1]["normalized_margin"]))
    self.assertLess(history[-1]["loss"], history[0]["loss"] + 1.0)


if __name__ == "__main__":
  absltest.main()
