"""Parity sweeps on populations, lottery tickets, confidence bands and the runner."""
import json
import os

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from data_pipelines import parity
from experiments.parity import parity_config as config_lib
from experiments.parity import frontier_plots as plots
from experiments.parity import parity_analysis as analysis
from experiments.parity import parity_runner as runner
from experiments.parity import parity_sweep as ps
from framework import config as framework_config
from framework import mesh as mesh_lib
from framework import optim
from framework import train_step as train_step_lib
from framework.train_state import TrainState
from models import sparse_mlp


def _mixed_data(n=10, m=256, num_test=256):
  """Pool 0: a 1-sparse parity (easy); pool 1: a 3-sparse parity (hard)."""
  a = parity.offline_parity(n, 1, m, num_test, seed=0)
  b = parity.offline_parity(n, 3, m, num_test, seed=1)
  return ps.SweepData(*(np.stack([u, v]) for u, v in zip(a[:4], b[:4])))


def _config(**trainer):
  """The study's config with SGD lr 0.1 / wd 0.01 and the given trainer fields."""
  c = config_lib.get_config("small")
  c.trainer.update(trainer)
  return c


class SweepTest(absltest.TestCase):

  def test_vmapped_sweep_equals_separate_runs(self):
    """Every run of a (sharded, compacting) batch matches training it alone."""
    n, width = 10, 32
    data = _mixed_data(n)
    # Mixed runs: easy ones stop early, hard ones run out the budget, so the
    # batch is compacted (and padded to the 8 test devices) along the way.
    d_arr = np.array([0, 1, 0, 1, 0])
    m_arr = np.array([256, 64, 128, 256, 32])
    s_arr = np.array([2, n, n, 3, 2])
    params0 = ps.init_batch(ps.run_seeds(np.arange(5), 0, s_arr), n, width, s_arr)
    runs = ps.Runs(d_arr, m_arr, ps.run_seeds(np.arange(5), 1))
    c = _config(batch_size=16, max_steps=200, eval_every=20, success_acc=0.95)
    batch = ps.sweep(c, data, params0, runs, keep_params=True)  # 8 devices
    self.assertTrue(batch.success.any())
    self.assertFalse(batch.success.all())
    for j in range(5):
      one = ps.sweep(c, data, jax.tree.map(lambda a: a[j:j + 1], params0),
                     ps.Runs(d_arr[j:j + 1], m_arr[j:j + 1], runs.seed[j:j + 1]),
                     mesh=mesh_lib.create_mesh({"data": 1}, jax.devices()[:1]),
                     keep_params=True)
      self.assertEqual(one.success[0], batch.success[j])
      self.assertEqual(one.steps_to_success[0], batch.steps_to_success[j])
      self.assertEqual(one.steps_run[0], batch.steps_run[j])
      evals = len(one.acc_history)
      np.testing.assert_allclose(one.acc_history[:, 0], batch.acc_history[:evals, j], atol=1e-6)
      self.assertTrue(np.all(np.isnan(batch.acc_history[evals:, j])))
      for k in params0:
        np.testing.assert_allclose(one.params[k][0], batch.params[k][j], rtol=1e-4, atol=1e-5)
    # Stopped runs are recorded as stopped: steps_run = steps_to_success.
    won = batch.success
    np.testing.assert_array_equal(batch.steps_run[won], batch.steps_to_success[won])
    np.testing.assert_array_equal(batch.steps_run[~won], c.trainer.max_steps)
    self.assertTrue(np.all(batch.test_acc[won] >= 0.95))

  def test_sgd_hinge_step_matches_numpy(self):
    """One common step: theta - lr (grad mean hinge + wd theta), gradient in closed form."""
    rng = np.random.default_rng(0)
    n, r, b = 6, 5, 8
    p = sparse_mlp.host_init(3, n, r, 3)
    x = parity.sample_inputs(rng, b, n)
    y = np.where(rng.random(b) < 0.5, -1.0, 1.0).astype(np.float32)
    p["a"] = p["a"] * 8  # Some margins above 1, some below.
    lr, wd = 0.3, 0.05
    c = _config(batch_size=b)
    c.optimizer.weight_decay = wd
    c.schedule.peak_lr = lr
    model = ps.model_for(c, r, 1)
    tx = optim.make_optimizer(c.optimizer, lr)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                       rng=jax.random.PRNGKey(0))
    state, metrics = jax.jit(train_step_lib.make_train_step(model, tx))(state, {"x": x, "y": y})
    new, loss = state.params, metrics["loss"]
    q = {k: v.astype(np.float64) for k, v in p.items()}
    pre = x @ q["w"].T + q["b"]
    h = np.maximum(pre, 0)
    f = h @ q["a"][:, 0] + q["c"][0]
    active = (y * f < 1).astype(np.float64)  # d/df mean max(0, 1 - y f) = -y 1[yf<1] / B
    g_f = -y * active / b
    grads = {"a": (h.T @ g_f)[:, None], "c": np.array([g_f.sum()])}
    g_pre = g_f[:, None] * q["a"][:, 0][None] * (pre > 0)
    grads["w"] = g_pre.T @ x
    grads["b"] = g_pre.sum(0)
    self.assertAlmostEqual(float(loss), float(np.mean(np.maximum(0, 1 - y * f))), places=5)
    self.assertTrue(0 < active.sum() < b)
    for k in q:
      np.testing.assert_allclose(np.asarray(new[k]), q[k] - lr * (grads[k] + wd * q[k]),
                                 rtol=1e-5, atol=1e-6, err_msg=k)

  def test_no_early_stopping_runs_the_budget(self):
    data = _mixed_data()
    params0 = ps.init_batch(ps.run_seeds([0, 1], 0), 10, 8, [10, 10])
    runs = ps.Runs(np.array([0, 0]), np.array([64, 64]), ps.run_seeds([0, 1], 1))
    c = _config(batch_size=8, max_steps=60, eval_every=20, success_acc=2.0)
    res = ps.sweep(c, data, params0, runs)
    np.testing.assert_array_equal(res.steps_run, [60, 60])
    self.assertFalse(res.success.any())
    self.assertEqual(res.acc_history.shape, (3, 2))
    with self.assertRaises(ValueError):
      ps.sweep(c, data, params0, runs._replace(num_train=np.array([0, 64])))

  def test_lottery_ticket_rewinds_top_neurons(self):
    n, width, keep = 10, 24, 4
    data = _mixed_data(n)
    params0 = ps.init_batch(ps.run_seeds([0, 1], 0), n, width, [3, 3])
    trained = jax.tree.map(np.array, params0)
    trained["a"][:, [5, 17, 2, 9]] = 50.0  # These four must be the ticket.
    runs = ps.Runs(np.array([0, 1]), np.array([128, 128]), ps.run_seeds([0, 1], 1))
    c = _config(batch_size=8, max_steps=20, eval_every=20)
    supports = np.array([[3, 3, 3], [0, 1, 2]])  # Pool 0's 1-sparse support, padded.
    supports[0] = parity.offline_parity(n, 1, 4, 4, seed=0).support[0]
    supports[1] = parity.offline_parity(n, 3, 4, 4, seed=1).support
    lt = ps.lottery_ticket(c, data, params0, trained, runs, keep, supports=supports)
    for j in range(2):
      self.assertEqual(set(lt.top_index[j].tolist()), {5, 17, 2, 9})
    np.testing.assert_array_equal(
        ps.top_neurons(trained, keep),
        np.argsort(-np.asarray(jax.vmap(sparse_mlp.neuron_scores)(trained)), 1)[:, :keep])
    self.assertEqual(lt.ticket.test_acc.shape, (2,))
    self.assertEqual(lt.random.test_acc.shape, (2,))
    w = np.asarray(params0["w"])
    lucky = np.array([[np.all(w[j, i, supports[j]] != 0) for i in range(width)]
                      for j in range(2)])
    np.testing.assert_array_equal(lt.lucky_total, lucky.sum(1))
    np.testing.assert_array_equal(lt.lucky_in_ticket,
                                  [lucky[j, lt.top_index[j]].sum() for j in range(2)])
    overlap = np.array([[np.sum(w[j, i, supports[j]] != 0) for i in range(width)]
                        for j in range(2)])
    np.testing.assert_allclose(lt.ticket_overlap,
                               [overlap[j, lt.top_index[j]].mean() for j in range(2)])


class IntervalTest(absltest.TestCase):

  def test_wilson_closed_form(self):
    lo, hi = plots.wilson_interval(5, 10)
    self.assertAlmostEqual(float(lo), 0.2366, places=4)
    self.assertAlmostEqual(float(hi), 0.7634, places=4)
    lo, hi = plots.wilson_interval(10, 10)
    self.assertEqual(float(hi), 1.0)  # Exactly, so that hi - p >= 0 for error bars.
    lo, hi = plots.wilson_interval(0, 10)
    self.assertEqual(float(lo), 0.0)
    z = stats.norm.ppf(0.975)
    self.assertAlmostEqual(float(hi), z * z / (10 + z * z), places=6)

  def test_clopper_pearson_edges_and_coverage(self):
    n, a = 10, 0.05
    lo, hi = plots.clopper_pearson_interval(np.array([0, n]), n)
    self.assertAlmostEqual(float(hi[0]), 1 - (a / 2) ** (1 / n), places=6)
    self.assertAlmostEqual(float(lo[1]), (a / 2) ** (1 / n), places=6)
    self.assertEqual(float(lo[0]), 0.0)
    self.assertEqual(float(hi[1]), 1.0)
    # Exact coverage >= 95% for every p (it is conservative).
    ks = np.arange(n + 1)
    lo, hi = plots.clopper_pearson_interval(ks, n)
    for p in np.linspace(0.01, 0.99, 25):
      cover = stats.binom.pmf(ks, n, p)[(lo <= p) & (p <= hi)].sum()
      self.assertGreaterEqual(cover, 0.95 - 1e-9)


class FindingsWordingTest(absltest.TestCase):
  """Effects are stated only where the Wilson 95% intervals are disjoint."""

  def test_effect_on_constructed_counts(self):
    self.assertEqual(analysis.effect(1, 4, 0, 4), "not resolved")
    self.assertEqual(analysis.effect(2, 4, 0, 4), "not resolved")
    # 4/4: [0.51, 1]; 0/4: [0, 0.49] - disjoint.
    self.assertEqual(analysis.effect(4, 4, 0, 4), "higher")
    self.assertEqual(analysis.effect(0, 4, 4, 4), "lower")
    self.assertEqual(analysis.effect(9, 10, 1, 10), "higher")
    self.assertEqual(analysis.effect(5, 10, 5, 10), "not resolved")
    text = analysis.compare_counts("width 8", (1, 4), "width 2", (0, 4))
    self.assertIn("1/4", text)
    self.assertIn("not resolved", text)

  def _cells(self, counts):
    # counts[init][width index] = successes of 4 at the one m.
    return {(i, w, 100): (k, 4) for i, ks in counts.items()
            for w, k in zip((2, 8), ks)}

  def test_frontier_findings_do_not_call_one_in_four_a_finding(self):
    med = {(i, w): np.array([np.nan]) for i in ("dense", "s=2") for w in (2, 8)}
    cells = self._cells({"dense": (0, 1), "s=2": (0, 4)})
    text = "\n".join(analysis.frontier_findings(cells, med, ["dense", "s=2"], [2, 8], [100]))
    dense_line = [l for l in text.splitlines() if l.startswith("dense, m=100")]
    self.assertLen(dense_line, 1)
    self.assertIn("width effect not resolved", dense_line[0])
    self.assertNotIn("rises", dense_line[0])
    s_line = [l for l in text.splitlines() if l.startswith("s=2, m=100")]
    self.assertIn("P(success) rises with width", s_line[0])
    # s=2 vs dense: 4/4 vs 1/4 at width 8 is not resolved; nothing is "higher".
    vs = [l for l in text.splitlines() if l.startswith("s=2 vs dense")][0]
    self.assertIn("higher at (width, m) = none", vs)
    self.assertIn("not resolved at [(8, 100)]", vs)


class RunnerTest(absltest.TestCase):

  def _config(self, experiment):
    c = config_lib.get_config("small")
    c.experiment = experiment
    c.parity.n, c.parity.k, c.parity.num_test = 10, 2, 128
    c.grid.widths, c.grid.num_samples, c.grid.num_seeds = (16, 64), (32, 256), 2
    c.grid.sparsities = (0, 4)
    c.trainer.max_steps, c.trainer.eval_every, c.trainer.batch_size = 200, 50, 16
    c.lottery.width, c.lottery.num_samples, c.lottery.num_seeds = 64, 256, 2
    c.lottery.sparsity = 4
    c.lottery.keep = (8,)
    return c

  def test_config_variants(self):
    reference = runner.default_config()
    for variant in config_lib.VARIANTS:
      c = config_lib.get_config(variant)
      framework_config.check_keys(c, reference)  # one schema for every variant
      self.assertEqual(c.runner, "experiments.parity.parity_runner")
    self.assertEqual(config_lib.get_config("small_tabular").model.loss, "xent")
    self.assertEqual(config_lib.get_config().grid.widths, (100, 300, 1000))
    with self.assertRaises(ValueError):
      config_lib.get_config("huge")
    bad = config_lib.get_config("small")
    bad.trainer.totl_steps = 3
    with self.assertRaisesRegex(framework_config.ConfigError, "totl_steps"):
      runner.run(bad, self.create_tempdir().full_path)

  def test_frontier_end_to_end(self):
    workdir = self.create_tempdir().full_path
    summary = runner.run(self._config("frontier"), workdir)
    self.assertEqual(summary["runs"], 2 * 2 * 2 * 2)
    for f in ("report.md", "metrics.jsonl", "results.json", "frontier_success.png",
              "frontier_heatmap.png", "frontier_steps.png"):
      self.assertTrue(os.path.exists(os.path.join(workdir, f)), f)
    with open(os.path.join(workdir, "results.json")) as f:
      records = json.load(f)["records"]
    self.assertLen(records, 16)
    # (10, 2) parity from 256 samples is easy: most runs succeed; 32 is too few.
    big = [r["success"] for r in records if r["m"] == 256]
    self.assertGreaterEqual(np.mean(big), 0.5)
    report = open(os.path.join(workdir, "report.md")).read()
    self.assertIn("| sparse s=4 | 64 |", report)
    self.assertIn("Runtime", report)

  def test_lottery_end_to_end(self):
    workdir = self.create_tempdir().full_path
    summary = runner.run(self._config("lottery"), workdir)
    self.assertIn("ticket8_success", summary)
    self.assertTrue(os.path.exists(os.path.join(workdir, "lottery.png")))
    self.assertIn("top-8 ticket", open(os.path.join(workdir, "report.md")).read())


if __name__ == "__main__":
  absltest.main()
