"""Normalised gradient descent (optimizers.normalized) against numpy."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizers import normalized_sgd, scale_by_global_norm


def _tree(rng, scale=1.0):
  return {"w": jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32),
          "b": jnp.asarray(scale * rng.normal(size=(5,)), jnp.float32)}


def _np_global_norm(tree):
  return np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))


class NormalizedTest(parameterized.TestCase):

  @parameterized.parameters(1e-3, 1.0, 1e4)
  def test_direction_is_gradient_over_global_norm(self, scale):
    rng = np.random.default_rng(0)
    g = _tree(rng, scale)
    tx = scale_by_global_norm()
    u, state = jax.jit(tx.update)(g, tx.init(g))
    norm = _np_global_norm(g)
    for k in g:
      np.testing.assert_allclose(u[k], np.asarray(g[k], np.float64) / norm, rtol=1e-6)
    self.assertAlmostEqual(_np_global_norm(u), 1.0, places=5)
    self.assertEqual(state, optax.EmptyState())

  def test_step_with_schedule_and_decoupled_weight_decay(self):
    rng = np.random.default_rng(1)
    params, lam = _tree(rng), 0.01
    grads = [_tree(rng) for _ in range(3)]
    lrs = optax.linear_schedule(0.3, 0.1, 2)
    tx = normalized_sgd(lrs, weight_decay=lam)
    state = tx.init(params)
    upd = jax.jit(tx.update)
    for t, g in enumerate(grads):
      u, state = upd(g, state, params)
      eta, norm = float(lrs(t)), _np_global_norm(g)
      for k in g:
        p, gk = np.asarray(params[k], np.float64), np.asarray(g[k], np.float64)
        np.testing.assert_allclose(u[k], -eta * (gk / norm + lam * p), rtol=1e-5, atol=1e-7)
      params = optax.apply_updates(params, u)

  def test_zero_gradient_gives_zero_update_and_bf16_keeps_dtype(self):
    zeros = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(5)}
    tx = normalized_sgd(0.1)
    u, _ = tx.update(zeros, tx.init(zeros), zeros)
    for x in jax.tree.leaves(u):
      np.testing.assert_array_equal(x, 0.0)
    rng = np.random.default_rng(2)
    g = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(rng, 1e3))
    u, _ = scale_by_global_norm().update(g, optax.EmptyState())
    norm = _np_global_norm(jax.tree.map(lambda x: np.asarray(x, np.float32), g))
    for k in g:
      self.assertEqual(u[k].dtype, jnp.bfloat16)
      np.testing.assert_allclose(np.asarray(u[k], np.float32),
                                 np.asarray(g[k], np.float32) / norm, rtol=1e-2, atol=1e-3)

  def test_eps_bounds_the_step_of_a_tiny_gradient(self):
    g = {"w": jnp.full((2, 2), 1e-6)}
    u, _ = scale_by_global_norm(eps=1.0).update(g, optax.EmptyState())
    np.testing.assert_allclose(u["w"], 1e-6 / (2e-6 + 1.0), rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
