"""Tabular benchmark: scikit-learn data sets, splits, noise features, runner."""
import json
import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from experiments import parity_sweep as runner
from tools import parity_sweep as ps


class TabularDataTest(parameterized.TestCase):

  @parameterized.parameters(("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3),
                            ("digits", 1797, 64, 10), ("iris", 150, 4, 3))
  def test_shipped_data_sets(self, name, rows, cols, classes):
    x, y = ps.load_tabular(name)
    self.assertEqual(x.shape, (rows, cols))
    self.assertEqual(sorted(np.unique(y).tolist()), list(range(classes)))

  def test_unknown_data_set(self):
    with self.assertRaises(ValueError):
      ps.load_tabular("adult")

  def test_noise_features(self):
    x, _ = ps.load_tabular("iris")
    z = ps.add_noise_features(x, 8, seed=0)
    self.assertEqual(z.shape, (150, 12))
    np.testing.assert_array_equal(z[:, :4], x)
    self.assertLess(abs(z[:, 4:].mean()), 0.1)
    self.assertAlmostEqual(z[:, 4:].std(), 1.0, delta=0.1)
    np.testing.assert_array_equal(ps.add_noise_features(x, 8, seed=0), z)

  def test_split_fractions_share_the_test_set(self):
    x, y = ps.load_tabular("wine")
    full = ps.tabular_split(x, y, 1.0, seed=3)
    part = ps.tabular_split(x, y, 0.3, seed=3)
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

  def test_stack_splits_pads(self):
    x, y = ps.load_tabular("iris")
    splits = [ps.tabular_split(x, y, f, seed=0) for f in (0.2, 1.0)]
    data, m = ps.stack_splits(splits)
    self.assertEqual(m.tolist(), [len(splits[0].y_train), len(splits[1].y_train)])
    self.assertEqual(data.x_train.shape, (2, m.max(), 4))
    np.testing.assert_array_equal(data.x_train[0, :m[0]], splits[0].x_train)
    self.assertTrue(np.all(data.x_train[0, m[0]:] == 0))

  def test_random_forest_learns_iris(self):
    x, y = ps.load_tabular("iris")
    self.assertGreater(ps.random_forest_accuracy(ps.tabular_split(x, y, 1.0, 0), 0, 50), 0.85)


class TabularRunnerTest(absltest.TestCase):

  def test_tabular_end_to_end(self):
    c = runner.default_config()
    c.experiment = "tabular"
    c.tabular.datasets = ("iris",)
    c.tabular.noise_factors = (0, 2)
    c.tabular.fractions = (0.3, 1.0)
    c.tabular.num_seeds = 2
    c.tabular.width = 64
    c.tabular.steps = 300
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
    report = open(os.path.join(workdir, "report.md")).read()
    self.assertIn("| iris+2d noise | 0.3 |", report)
    self.assertTrue(os.path.exists(os.path.join(workdir, "tabular.png")))


if __name__ == "__main__":
  absltest.main()
