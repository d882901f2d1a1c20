"""Sparse parity data and the dense / s-sparse two-layer MLP (and its contract)."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import parity
from models import contract
from models import registry
from models import sparse_mlp


class ParityDataTest(parameterized.TestCase):

  def test_all_inputs_is_the_hypercube(self):
    x = parity.all_inputs(5)
    self.assertEqual(x.shape, (32, 5))
    self.assertLen({tuple(r) for r in x.tolist()}, 32)
    self.assertTrue(np.all(np.abs(x) == 1))

  @parameterized.parameters(((0, 2, 5),), ((1,),), ((0, 1, 2, 3),))
  def test_parity_uncorrelated_with_every_other_parity(self, support):
    """E[chi_S chi_T] = 1[S = T] exactly, over all of {+-1}^6, for every T."""
    n = 6
    x = parity.all_inputs(n)
    # Labels as the data pipeline makes them (fixed support).
    ds = parity.offline_parity(n, len(support), 2 ** n, 4, seed=0, support=support)
    np.testing.assert_array_equal(ds.support, np.array(support))
    y = parity.character(x, support)
    subsets = list(parity.subsets(n))
    self.assertLen(subsets, 2 ** n)
    for t in subsets:
      chi_t = np.prod(x[:, list(t)], axis=1) if t else np.ones(len(x))
      corr = float(np.mean(y * chi_t))
      self.assertEqual(corr, 1.0 if tuple(t) == tuple(support) else 0.0, msg=str(t))

  def test_labels_are_the_product_of_the_support(self):
    ds = parity.offline_parity(50, 3, 500, 300, seed=7)
    self.assertLen(ds.support, 3)
    self.assertLen(set(ds.support.tolist()), 3)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
      self.assertTrue(np.all(np.abs(x) == 1))
      ref = np.ones(len(x))
      for i in ds.support:
        ref = ref * x[:, i]
      np.testing.assert_array_equal(y, ref)
    self.assertEqual(ds.x_train.shape, (500, 50))
    self.assertEqual(ds.x_test.shape, (300, 50))
    # Roughly balanced labels and coordinates (uniform hypercube).
    self.assertLess(abs(ds.y_train.mean()), 0.15)
    self.assertLess(np.abs(ds.x_train.mean(0)).max(), 0.2)

  def test_seed_datasets_deterministic_and_nested(self):
    a = parity.seed_datasets(20, 3, 64, 16, seeds=[3, 4])
    b = parity.seed_datasets(20, 3, 64, 16, seeds=[3, 4])
    for fa, fb in zip(a, b):
      np.testing.assert_array_equal(fa, fb)
    self.assertEqual(a.x_train.shape, (2, 64, 20))
    self.assertEqual(a.support.shape, (2, 3))
    one = parity.offline_parity(20, 3, 64, 16, seed=4)
    np.testing.assert_array_equal(a.x_train[1], one.x_train)
    self.assertFalse(np.array_equal(a.x_train[0], a.x_train[1]))

  def test_bad_support_raises(self):
    with self.assertRaises(ValueError):
      parity.offline_parity(10, 3, 8, 8, seed=0, support=(1, 2))
    with self.assertRaises(ValueError):
      parity.random_support(np.random.default_rng(0), 4, 5)


class SparseMLPTest(parameterized.TestCase):

  @parameterized.parameters(1, 3, 7, 50)
  def test_sparse_rows_have_exactly_s_nonzeros(self, s):
    params = sparse_mlp.host_init(s, 50, 400, s)
    nnz = np.asarray(sparse_mlp.row_nonzeros(params))
    np.testing.assert_array_equal(nnz, np.full(400, s))
    self.assertEqual(params["a"].shape, (400, 1))

  def test_init_is_deterministic_and_checks_sparsity(self):
    a = sparse_mlp.host_init(5, 10, 64, 3)
    b = sparse_mlp.host_init(np.random.default_rng(5), 10, 64, 3)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    c = sparse_mlp.host_init(6, 10, 64, 3)
    self.assertFalse(np.array_equal(a["w"], c["w"]))
    for bad in (0, 11):
      with self.assertRaises(ValueError):
        sparse_mlp.host_init(0, 10, 8, bad)

  def test_support_is_uniform_and_preactivation_unit_variance(self):
    n, s, r = 20, 4, 4000
    params = sparse_mlp.host_init(1, n, r, s)
    w = np.asarray(params["w"])
    freq = (w != 0).mean(0)  # each coordinate in a row's support w.p. s / n.
    np.testing.assert_allclose(freq, s / n, atol=0.03)
    x = parity.sample_inputs(np.random.default_rng(0), 512, n)
    np.testing.assert_allclose(np.var(x @ w.T), 1.0, atol=0.1)
    dense = sparse_mlp.host_init(1, n, r)
    self.assertTrue(np.all(np.asarray(dense["w"]) != 0))
    np.testing.assert_allclose(np.var(x @ np.asarray(dense["w"]).T), 1.0, atol=0.1)

  def test_apply_and_scores_match_numpy(self):
    params = sparse_mlp.host_init(2, 6, 9, 3, num_outputs=2)
    params["c"] = np.array([0.3, -0.1], np.float32)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.random.default_rng(0).normal(size=(5, 6))
    ref = np.maximum(x @ p["w"].T + p["b"], 0) @ p["a"] + p["c"]
    np.testing.assert_allclose(np.asarray(sparse_mlp.apply(params, jnp.asarray(x, jnp.float32))),
                               ref, rtol=1e-5, atol=1e-5)
    score = np.sqrt((p["w"] ** 2).sum(1) + p["b"] ** 2) * np.sqrt((p["a"] ** 2).sum(1))
    np.testing.assert_allclose(np.asarray(sparse_mlp.neuron_scores(params)), score, rtol=1e-5)
    sub = sparse_mlp.select_neurons(params, jnp.array([4, 1]))
    np.testing.assert_array_equal(np.asarray(sub["w"]), p["w"][[4, 1]].astype(np.float32))
    self.assertEqual(sparse_mlp.width_of(sub), 2)

  def test_covers_support(self):
    params = sparse_mlp.host_init(3, 8, 300, 4)
    support = np.array([1, 5])
    got = np.asarray(sparse_mlp.covers_support(params, jnp.asarray(support)))
    w = np.asarray(params["w"])
    ref = np.array([all(w[i, j] != 0 for j in support) for i in range(300)])
    np.testing.assert_array_equal(got, ref)
    overlap = np.asarray(sparse_mlp.support_overlap(params, jnp.asarray(support)))
    np.testing.assert_array_equal(overlap, (w[:, support] != 0).sum(1))
    self.assertAlmostEqual(overlap.mean(), 2 * 4 / 8, delta=0.1)  # k s / n.
    # C(6, 2) / C(8, 4) = 15 / 70 of the neurons, roughly.
    self.assertAlmostEqual(ref.mean(), 15 / 70, delta=0.07)


class SparseMLPContractTest(parameterized.TestCase):

  @parameterized.parameters(1, 3, 20)
  def test_jax_init_matches_the_host_distribution(self, s):
    """Exactly s non-zeros per row, uniform supports, unit-variance pre-activations."""
    n, r = 20, 4000
    model = registry.build(dict(name="sparse_mlp", width=r, sparsity=s))
    self.assertIsInstance(model, contract.Model)
    batch = {"x": np.zeros((2, n), np.float32), "y": np.ones(2, np.float32)}
    params = model.init(jax.random.PRNGKey(0), batch)
    w = np.asarray(params["w"])
    np.testing.assert_array_equal((w != 0).sum(1), np.full(r, s))
    np.testing.assert_allclose((w != 0).mean(0), s / n, atol=0.03)
    x = parity.sample_inputs(np.random.default_rng(0), 512, n)
    np.testing.assert_allclose(np.var(x @ w.T), 1.0, atol=0.1)
    b = np.asarray(params["b"])
    self.assertTrue(np.all(np.abs(b) <= 1.0))
    self.assertAlmostEqual(float(np.var(b)), 1 / 3, delta=0.03)  # U(-1, 1)
    self.assertAlmostEqual(float(np.var(np.asarray(params["a"])) * r), 1.0, delta=0.1)
    again = model.init(jax.random.PRNGKey(0), batch)
    np.testing.assert_array_equal(np.asarray(again["w"]), w)
    self.assertFalse(np.array_equal(np.asarray(model.init(jax.random.PRNGKey(1), batch)["w"]),
                                    w))

  @parameterized.parameters("hinge", "logistic", "xent")
  def test_loss_sums_match_numpy(self, loss):
    rng = np.random.default_rng(1)
    c = 3 if loss == "xent" else 1
    params = sparse_mlp.host_init(2, 6, 9, 3, num_outputs=c)
    params["a"] = params["a"] * 6  # margins on both sides of 1
    x = parity.sample_inputs(rng, 16, 6)
    y = (rng.integers(0, 3, 16) if loss == "xent" else
         np.where(rng.random(16) < 0.5, -1.0, 1.0)).astype(np.float32)
    model = registry.build(dict(name="sparse_mlp", width=9, num_outputs=c, loss=loss))
    got = {k: float(v) for k, v in model.loss(params, {"x": x, "y": y}).items()}
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    f = np.maximum(x @ p["w"].T + p["b"], 0) @ p["a"] + p["c"]
    if loss == "xent":
      z = f - f.max(1, keepdims=True)
      per = np.log(np.exp(z).sum(1)) - z[np.arange(16), y.astype(int)]
      correct = f.argmax(1) == y
    else:
      margin = y * f[:, 0]
      per = np.maximum(0, 1 - margin) if loss == "hinge" else np.log1p(np.exp(-margin))
      correct = margin > 0
      self.assertTrue(0 < (margin < 1).sum() < 16)
    self.assertAlmostEqual(got["loss"], per.sum(), places=4)
    self.assertEqual(got["accuracy"], correct.sum())
    self.assertEqual(got["count"], 16)
    # f = 0 counts as wrong for the sign losses (an all-zero net scores 0).
    if loss != "xent":
      zero = jax.tree.map(np.zeros_like, params)
      self.assertEqual(float(model.loss(zero, {"x": x, "y": y})["accuracy"]), 0.0)

  def test_config_is_checked(self):
    with self.assertRaisesRegex(ValueError, "loss"):
      registry.build(dict(name="sparse_mlp", loss="mse"))
    with self.assertRaisesRegex(ValueError, "num_outputs"):
      registry.build(dict(name="sparse_mlp", num_outputs=2, loss="hinge"))
    with self.assertRaisesRegex(ValueError, "sparsity"):
      model = registry.build(dict(name="sparse_mlp", sparsity=7))
      model.init(jax.random.PRNGKey(0), {"x": np.zeros((1, 5), np.float32)})
    self.assertEqual(registry.build(dict(name="sparse_mlp", width=4)).logical_axes(None)["w"],
                     ("mlp", "embed"))


if __name__ == "__main__":
  absltest.main()
