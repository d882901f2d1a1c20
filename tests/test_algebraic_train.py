"""Training on the algebraic tasks: the objective, the model contract, tiny runs
through the framework's trainer and the margins runner end to end."""
import json
import math
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import algebraic_tasks as data
from experiments.margins import margins_config
from experiments.margins import margins_runner as runner
from framework import config as config_lib
from framework import mesh as mesh_lib
from framework import optim
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib
from models import algebraic_nets as models
from models import registry


def _np_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


def _np_norm_pow(params, nu):
  sq = sum(np.sum(np.asarray(p, np.float64) ** 2, axis=1) for p in params.values())
  return float(np.sum(sq ** (nu / 2)))


def _one_device():
  return mesh_lib.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


class CrossEntropyTest(absltest.TestCase):

  def test_matches_log_softmax(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 5)) * 3
    labels = rng.integers(0, 5, size=16)
    got = models.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(got),
                               _np_cross_entropy(logits, labels), rtol=1e-5,
                               atol=1e-6)

  def test_accurate_for_large_margins(self):
    # Margins 40 and 60: the loss is ~e^-40, which float32 log-softmax rounds
    # to 0; the log1p form keeps it (reference: sum_j exp(-margin_j)).
    logits = jnp.asarray([[40.0, 0.0, -5.0], [0.0, 60.0, 1.0]])
    labels = jnp.asarray([0, 1])
    got = np.asarray(models.cross_entropy(logits, labels), np.float64)
    ref = np.array([np.exp(-40.0) + np.exp(-45.0), np.exp(-60.0) +
                    np.exp(-59.0)])
    np.testing.assert_allclose(got, ref, rtol=1e-4)

  def test_lambda_schedule(self):
    net = models.TwoInputNet(5, 5, 4, schedule_steps=100, lambda_start=1e-2,
                             lambda_end=1e-6, lambda_hold=0.5, lambda_decay_end=0.9)
    np.testing.assert_allclose(float(net.penalty_weight(10)), 1e-2)
    np.testing.assert_allclose(float(net.penalty_weight(70)), 1e-4, rtol=1e-4)
    for step in (90, 100):
      np.testing.assert_allclose(float(net.penalty_weight(step)), 1e-6, rtol=1e-4)
    # Traced (in-jit) and numpy evaluation agree.
    self.assertAlmostEqual(float(jax.jit(net.penalty_weight)(jnp.asarray(80))),
                           float(net.penalty_weight(np.float64(80))), delta=1e-9)


class ObjectiveContractTest(parameterized.TestCase):
  """models.algebraic_nets meets models.contract: sums, count, logical axes, the step."""

  def _net_and_batch(self, log_objective):
    net = registry.build(dict(name="two_input_net", vocab_size=5, num_classes=5, width=6,
                              schedule_steps=100, lambda_start=1e-2, lambda_end=1e-4,
                              log_objective=log_objective))
    ds = data.modular_addition(5)
    return net, {"inputs": ds.inputs, "labels": ds.labels}

  @parameterized.parameters(False, True)
  def test_loss_sums_match_numpy(self, log_objective):
    net, batch = self._net_and_batch(log_objective)
    self.assertIsInstance(net, models.TwoInputNet)
    self.assertTrue(net.uses_step)
    params = net.init(jax.random.PRNGKey(0), batch)
    self.assertEqual(net.logical_axes(params),
                     {"u": ("neurons", "inputs"), "v": ("neurons", "inputs"),
                      "w": ("neurons", "classes")})
    step = 30
    sums = net.loss(params, dict(batch, step=step))
    logits = np.asarray(net.apply(params, batch["inputs"]), np.float64)
    ce = _np_cross_entropy(logits, batch["labels"])
    # lambda_30 = 1e-2 (1e-4 / 1e-2)^(30 / 80).
    lam = 1e-2 * (1e-2) ** (30 / 80)
    total = ce.mean() + lam * _np_norm_pow(params, 3)
    n = len(batch["labels"])
    self.assertEqual(float(sums["count"]), n)
    expect = n * (math.log(total) if log_objective else total)
    np.testing.assert_allclose(float(sums["loss"]), expect, rtol=1e-5)
    np.testing.assert_allclose(float(sums["ce"]), ce.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["lambda"]) / n, lam, rtol=1e-5)
    correct = (logits.argmax(1) == batch["labels"]) & (
        np.sort(logits, 1)[:, -1] > np.sort(logits, 1)[:, -2])
    self.assertEqual(float(sums["accuracy"]), float(correct.sum()))
    if not log_objective:  # a sum over examples: halves add up to the whole
      half = lambda lo, hi: {k: v[lo:hi] for k, v in batch.items()}
      a = net.loss(params, dict(half(0, 12), step=step))
      b = net.loss(params, dict(half(12, n), step=step))
      for key in sums:
        np.testing.assert_allclose(float(a[key]) + float(b[key]), float(sums[key]),
                                   rtol=1e-5, err_msg=key)

  def test_train_step_passes_the_step(self):
    net, batch = self._net_and_batch(False)
    mesh = _one_device()
    opt = ml_collections.ConfigDict(dict(name="sgd", momentum=0.0, weight_decay=0.0,
                                         grad_clip_norm=0.0, kwargs={}))
    sched = ml_collections.ConfigDict(dict(name="constant", peak_lr=1e-3, warmup_steps=0))
    tx = optim.make_optimizer(opt, optim.make_schedule(sched, 100))
    state, _ = train_state_lib.create_sharded_state(net, tx, batch, mesh, ())
    step_fn = jax.jit(train_step_lib.make_train_step(net, tx))
    state = state.replace(step=jnp.asarray(40, jnp.int32))
    _, metrics = step_fn(state, batch)
    np.testing.assert_allclose(float(metrics["lambda"]), float(net.penalty_weight(40)),
                               rtol=1e-5)
    self.assertNotAlmostEqual(float(net.penalty_weight(40)), float(net.penalty_weight(0)))

  def test_unknown_activation_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "activation"):
      registry.build(dict(name="parity_net", input_dim=4, width=2, activation="tanh"))


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(*margins_config.VARIANTS)
  def test_variants_fit_the_schema_and_their_data(self, variant):
    config = margins_config.get_config(variant)
    config_lib.check_keys(config, runner.default_config())
    task = runner.features.build_task(config)
    runner.validate(config, len(task.dataset.labels), _one_device())
    self.assertGreater(task.max_margin, 0.0)
    self.assertEqual(config.model.schedule_steps, config.trainer.total_steps)

  def test_tied_fields_follow_overrides(self):
    config = margins_config.get_config("p11")
    config.data.p = 7
    config.trainer.total_steps = 300
    self.assertEqual((config.model.vocab_size, config.model.num_classes), (7, 7))
    self.assertEqual(config.model.schedule_steps, 300)
    config = margins_config.get_config("parity_10_4")
    config.data.parity.n, config.data.parity.k = 6, 2
    self.assertEqual((config.model.input_dim, config.model.degree), (6, 2))

  def test_bad_fields_fail_naming_them(self):
    config = margins_config.get_config("p11")
    config.trainer.steps_per_call = 30
    with self.assertRaisesRegex(config_lib.ConfigError, "steps_per_call"):
      runner.validate(config, 121, _one_device())
    config = margins_config.get_config("s3")
    config.model.vocab_size = 7
    with self.assertRaisesRegex(ValueError, "model.vocab_size"):
      runner.features.build_task(config)
    with self.assertRaises(ValueError):
      margins_config.get_config("s5")

  def test_even_p_is_rejected_naming_data_p(self):
    # The odd-p max margin sqrt(2/27) / (sqrt(p) (p - 1)) is not the max for
    # even p (p = 16 trained to 1.016 of it): refuse before training.
    config = margins_config.get_config("p11")
    config.data.p = 16
    with self.assertRaisesRegex(config_lib.ConfigError, r"data\.p.*even"):
      runner.validate(config, 256, _one_device())
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaisesRegex(config_lib.ConfigError, r"data\.p"):
        runner.run(config, workdir, mesh=_one_device())
      self.assertFalse(os.path.exists(os.path.join(workdir, "metrics.jsonl")))
    with self.assertRaisesRegex(ValueError, "even"):
      runner.features.margin_lib.max_margin_modular_addition(16)
    config.model.activation = "relu"  # no max-margin theory used: allowed
    runner.check_task(config)


def _tiny(config, steps, every=None):
  config.trainer.total_steps = steps
  config.trainer.log_every = every or steps // 4
  config.measure.every = every or steps // 4
  config.measure.early_steps = 0
  config.trainer.print_progress = False
  return config


class TrainTest(absltest.TestCase):
  """Tiny end-to-end runs through `run(config, workdir)` (framework trainer)."""

  def test_modular_addition_tiny_reaches_max_margin(self):
    config = _tiny(margins_config.get_config("p11"), 2000)
    config.data.p = 5
    config.model.width = 32
    with tempfile.TemporaryDirectory() as workdir:
      summary = runner.run(config, workdir, mesh=_one_device())
      for name in ("report.md", "margin_vs_step.png", "fourier.png",
                   "metrics.jsonl", "summary.json", "params.npz"):
        self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
      # The probe and the trainer log into the same metrics.jsonl.
      self.assertTrue(any("margin/margin_fraction" in r for r in records))
      self.assertTrue(any("train/loss" in r for r in records))
      with open(os.path.join(workdir, "report.md")) as f:
        self.assertIn("fraction of max", f.read())
    self.assertEqual(summary["final_step"], 2000)
    self.assertEqual(summary["accuracy"], 1.0)
    self.assertGreater(summary["margin_fraction"], 0.97)
    self.assertLessEqual(summary["margin_fraction"], 1.0 + 1e-4)
    self.assertTrue(summary["all_frequencies_used"])
    self.assertGreater(summary["min_max_power_active"], 0.95)
    self.assertLess(summary["max_phase_error_active"], 0.2)

  def test_rerun_does_not_duplicate_steps(self):
    config = _tiny(margins_config.get_config("p11"), 50, every=25)
    config.data.p = 5
    config.model.width = 8
    with tempfile.TemporaryDirectory() as workdir:
      counts = []
      for _ in range(2):
        runner.run(config, workdir, mesh=_one_device())
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          records = [json.loads(line) for line in f]
        steps = [r["step"] for r in records if "margin/normalized_margin" in r]
        self.assertEqual(steps, [25, 50])
        counts.append(len(records))
      self.assertEqual(counts[0], counts[1])

  def test_parity_tiny(self):
    config = _tiny(margins_config.get_config("parity_10_4"), 2000)
    config.data.parity.n, config.data.parity.k = 6, 2
    config.model.width = 8
    with tempfile.TemporaryDirectory() as workdir:
      summary = runner.run(config, workdir, mesh=_one_device())
      self.assertTrue(os.path.exists(os.path.join(workdir, "parity_support.png")))
    self.assertEqual(summary["accuracy"], 1.0)
    self.assertGreater(summary["margin_fraction"], 0.95)
    self.assertGreater(summary["min_support_fraction_active"], 0.95)

  def test_group_s3_tiny(self):
    config = _tiny(margins_config.get_config("s3"), 400, every=100)
    config.model.width = 24
    with tempfile.TemporaryDirectory() as workdir:
      summary = runner.run(config, workdir, mesh=_one_device())
      self.assertTrue(os.path.exists(os.path.join(workdir, "irreps.png")))
    self.assertAlmostEqual(summary["max_margin"],
                           2 / (3 * np.sqrt(18) * (1 + 2 ** 2.5)), places=9)
    self.assertGreater(summary["margin_fraction"], 0.5)
    self.assertEqual(summary["irrep_dims"], [1, 1, 2])
    self.assertGreater(summary["min_irrep_share_active"], 0.9)

  def test_minibatch_normalized_gd_learns(self):
    # Minibatches of 10 of the 25 examples through a BatchIterator, normalised
    # GD: the loss must fall by a clear factor and every example be fitted.
    config = _tiny(margins_config.get_config("p11"), 400, every=100)
    config.data.p = 5
    config.model.width = 16
    config.data.batch_size = 10
    config.optimizer.name = "normalized_gd"
    config.schedule.peak_lr = 0.1
    task = runner.features.build_task(config)
    with tempfile.TemporaryDirectory() as workdir:
      _, history, _, result = runner.train_and_probe(config, task, workdir,
                                                     mesh=_one_device())
    self.assertEqual(result.final_step, 400)
    self.assertEqual([h["step"] for h in history], [100, 200, 300, 400])
    self.assertTrue(np.isfinite(history[-1]["normalized_margin"]))
    self.assertLess(history[-1]["ce"], history[0]["ce"] / 10)
    self.assertLess(history[-1]["ce"], 0.1)
    self.assertEqual(history[-1]["accuracy"], 1.0)


if __name__ == "__main__":
  absltest.main()
