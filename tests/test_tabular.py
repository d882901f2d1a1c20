"""The tabular benchmark's own code: splits, noise features, stacking, the sparse
MLP population on tabular data, and the runner's random-forest baseline."""
import json
import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from experiments.parity import parity_config as config_lib
from experiments.parity import parity_runner as runner
from experiments.parity import parity_sweep as ps
from experiments.parity import tabular


class TabularDataTest(parameterized.TestCase):

  @parameterized.parameters(("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3),
                            ("digits", 1797, 64, 10), ("iris", 150, 4, 3))
  def test_load_tabular(self, name, rows, cols, classes):
    x, y = tabular.load_tabular(name)
    self.assertEqual(x.shape, (rows, cols))
    self.assertEqual(x.dtype, np.float64)
    self.assertEqual(sorted(np.unique(y).tolist()), list(range(classes)))

  def test_unknown_data_set(self):
    with self.assertRaisesRegex(ValueError, "adult"):
      tabular.load_tabular("adult")

  def test_noise_features(self):
    x, _ = tabular.load_tabular("iris")
    z = tabular.add_noise_features(x, 8, seed=0)
    self.assertEqual(z.shape, (150, 12))
    np.testing.assert_array_equal(z[:, :4], x)
    self.assertLess(abs(z[:, 4:].mean()), 0.1)
    self.assertAlmostEqual(z[:, 4:].std(), 1.0, delta=0.1)
    np.testing.assert_array_equal(tabular.add_noise_features(x, 8, seed=0), z)
    self.assertFalse(np.array_equal(tabular.add_noise_features(x, 8, seed=1), z))
    # Independent of the label: |corr| with y is at the level of chance (~1/sqrt(N)).
    _, y = tabular.load_tabular("iris")
    corr = [abs(np.corrcoef(z[:, j], y)[0, 1]) for j in range(4, 12)]
    self.assertLess(max(corr), 0.3)

  def test_split_fractions_share_the_test_set(self):
    x, y = tabular.load_tabular("wine")
    full = tabular.tabular_split(x, y, 1.0, seed=3)
    part = tabular.tabular_split(x, y, 0.3, seed=3)
    self.assertEqual(len(full.y_test), len(part.y_test))
    np.testing.assert_array_equal(full.y_test, part.y_test)
    self.assertEqual(len(full.y_train) + len(full.y_test), 178)
    self.assertEqual(len(part.y_train), round(0.3 * len(full.y_train)))
    # Every class present (stratified) and train features standardised.
    self.assertLen(np.unique(part.y_train), 3)
    np.testing.assert_allclose(part.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(part.x_train.std(0), 1, atol=1e-4)
    # Test rows are the same points (scaled by the subset's own statistics).
    self.assertFalse(np.allclose(full.x_test, part.x_test))
    self.assertEqual(full.x_test.shape, part.x_test.shape)

  def test_split_uses_only_training_statistics(self):
    """Recover which raw rows went where from an id column (the standardisation is an
    increasing affine map per column): train and test are disjoint raw rows, the test
    set is stratified, and every column is (x - mean) / std of the training rows alone
    (constant columns become 0)."""
    x_iris, y = tabular.load_tabular("iris")
    n = len(y)
    x = np.concatenate([np.arange(n, dtype=np.float64)[:, None], x_iris, np.full((n, 1), 7.0)],
                       axis=1)
    split = tabular.tabular_split(x, y, 0.5, seed=5, test_fraction=0.2)
    self.assertEqual((len(split.y_train), len(split.y_test)), (60, 30))
    z = split.x_train[:, 0].astype(np.float64)
    # Brute force over the raw ids (a < b) that the extreme training rows could be.
    a, b = np.triu_indices(n, 1)
    scale = (b - a) / (z.max() - z.min())
    shift = a - z.min() * scale
    ids = z[None, :] * scale[:, None] + shift[:, None]
    fits = np.all(np.abs(ids - np.round(ids)) < 1e-3, axis=1)
    self.assertEqual(fits.sum(), 1)
    sd, mu = scale[fits][0], shift[fits][0]
    train_ids = np.round(z * sd + mu).astype(int)
    test_ids = np.round(split.x_test[:, 0] * sd + mu).astype(int)
    np.testing.assert_allclose(split.x_test[:, 0] * sd + mu, test_ids, atol=1e-3)
    self.assertLen(set(train_ids.tolist()), 60)
    self.assertEmpty(set(train_ids.tolist()) & set(test_ids.tolist()))
    self.assertTrue(np.all((test_ids >= 0) & (test_ids < n)))
    np.testing.assert_array_equal(split.y_train, y[train_ids])
    np.testing.assert_array_equal(split.y_test, y[test_ids])
    # The statistics are the training rows' (not the test rows', not the whole set's).
    raw = x[train_ids]
    mean, std = raw.mean(0), np.where(raw.std(0) > 0, raw.std(0), 1.0)
    np.testing.assert_allclose(split.x_train, (raw - mean) / std, atol=1e-5)
    np.testing.assert_allclose(split.x_test, (x[test_ids] - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(split.x_train[:, -1], 0.0)  # the constant column
    self.assertFalse(np.allclose(mean, x.mean(0)))
    # Stratified: per-class test counts within 1 of 20% of each class.
    for k in range(3):
      self.assertLessEqual(abs((split.y_test == k).sum() - 0.2 * (y == k).sum()), 1)

  def test_stack_splits_pads(self):
    x, y = tabular.load_tabular("iris")
    splits = [tabular.tabular_split(x, y, f, seed=0) for f in (0.2, 1.0)]
    data, m = tabular.stack_splits(splits)
    self.assertEqual(m.tolist(), [len(splits[0].y_train), len(splits[1].y_train)])
    self.assertEqual(data.x_train.shape, (2, m.max(), 4))
    np.testing.assert_array_equal(data.x_train[0, :m[0]], splits[0].x_train)
    self.assertTrue(np.all(data.x_train[0, m[0]:] == 0))
    np.testing.assert_array_equal(data.y_train[1], splits[1].y_train)
    np.testing.assert_array_equal(data.y_test[0], splits[0].y_test)
    self.assertEqual(data.y_test.dtype, np.float32)

  def test_random_forest_baseline_is_seeded(self):
    x, y = tabular.load_tabular("iris")
    split = tabular.tabular_split(x, y, 1.0, 0)
    acc = tabular.random_forest_accuracy(split, 0, 50)
    self.assertGreater(acc, 0.85)
    self.assertEqual(tabular.random_forest_accuracy(split, 0, 50), acc)
    self.assertAlmostEqual(acc * len(split.y_test), round(acc * len(split.y_test)), places=6)


class SparseMLPOnTabularTest(absltest.TestCase):

  def test_sparse_mlp_learns_a_sparse_interaction_the_forest_also_finds(self):
    """y = [x_0 x_1 > 0] among 10 Gaussian features (8 irrelevant): our split, stacking
    and population-trained sparse MLP reach the random forest's accuracy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 10))
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    splits = [tabular.tabular_split(x, y, 1.0, seed) for seed in (0, 1)]
    data, m = tabular.stack_splits(splits)
    c = config_lib.get_config("small_tabular")
    c.trainer.max_steps = c.trainer.eval_every = 400
    s = np.array([2, 2])
    params0 = ps.init_batch(ps.run_seeds([0, 1], 0), 10, 64, s, num_outputs=2)
    res = ps.sweep(c, data, params0, ps.Runs(np.arange(2), m, ps.run_seeds([0, 1], 1)))
    rf = np.array([tabular.random_forest_accuracy(sp, seed, 50)
                   for seed, sp in enumerate(splits)])
    self.assertTrue(np.all(res.test_acc > 0.85), res.test_acc)
    self.assertTrue(np.all(res.test_acc >= rf - 0.08), (res.test_acc, rf))
    np.testing.assert_array_equal(res.steps_run, [400, 400])
    self.assertFalse(res.success.any())  # success_acc > 1: no early stopping


class TabularRunnerTest(absltest.TestCase):

  def test_tabular_end_to_end(self):
    c = config_lib.get_config("small_tabular")
    c.tabular.datasets = ("iris",)
    c.tabular.noise_factors = (0, 2)
    c.tabular.fractions = (0.3, 1.0)
    c.tabular.num_seeds = 2
    c.tabular.width = 64
    c.trainer.max_steps = c.trainer.eval_every = 300
    c.tabular.rf_trees = 30
    workdir = self.create_tempdir().full_path
    summary = runner.run(c, workdir)
    self.assertEqual(summary["rows"], 2 * 2)
    with open(os.path.join(workdir, "results.json")) as f:
      records = json.load(f)["records"]
    models = {r["model"] for r in records}
    self.assertEqual(models, {"random forest", "dense MLP", "sparse MLP"})
    self.assertLen(records, 3 * 2 * 2 * 2)  # models x noise x fractions x seeds
    clean = [r["test_acc"] for r in records
             if r["dataset"] == "iris" and r["fraction"] == 1.0]
    self.assertGreater(np.mean(clean), 0.85)  # Iris is easy for all three.
    # The runner's baseline is our forest on our split (same seed, same trees).
    x, y = tabular.load_tabular("iris")
    noisy = tabular.add_noise_features(x, 2 * 4, seed=1234)
    for r in records:
      if r["model"] != "random forest":
        continue
      xx = noisy if "noise" in r["dataset"] else x
      split = tabular.tabular_split(xx, y, r["fraction"], r["seed"], c.tabular.test_fraction)
      self.assertEqual(r["m"], len(split.y_train))
      self.assertEqual(r["test_acc"], tabular.random_forest_accuracy(split, r["seed"], 30))
    # Our sparse MLP vs that baseline on clean iris with the whole training pool.
    mean = lambda model: np.mean([r["test_acc"] for r in records if r["model"] == model
                                  and r["dataset"] == "iris" and r["fraction"] == 1.0])
    self.assertGreaterEqual(mean("sparse MLP"), mean("random forest") - 0.05)
    report = open(os.path.join(workdir, "report.md")).read()
    self.assertIn("| iris+2d noise | 0.3 |", report)
    self.assertTrue(os.path.exists(os.path.join(workdir, "tabular.png")))


if __name__ == "__main__":
  absltest.main()
