"""Shampoo (optimizers.shampoo) and the Kronecker helpers against dense references."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optimizers import kronecker as kr
from optimizers import SHAMPOO_STATIC_ARGS, scale_by_shampoo, shampoo, embedding_filter
from optimizers.shampoo import graft_blocks, momentum, resolve_exponent


def _randn(rng, shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _ridge(m, eps):
  return m + eps * np.linalg.eigvalsh(m).max() * np.eye(len(m))


def _dense_power(factors, g, exponent, eps):
  """(F_1,e (x) ... (x) F_k,e)^exponent vec(G) with np.kron and one big eigh."""
  k = np.ones((1, 1))
  for f in factors:
    k = np.kron(k, _ridge(np.asarray(f, np.float64), eps))
  w, v = np.linalg.eigh(k)
  return ((v * w ** exponent) @ v.T @ np.asarray(g, np.float64).ravel()).reshape(g.shape)


def _mode_stats(g):
  """Per-axis G_(i) G_(i)^T in numpy."""
  out = []
  for i in range(g.ndim):
    u = np.moveaxis(g, i, 0).reshape(g.shape[i], -1)
    out.append(u @ u.T)
  return out


def _run(tx, grads, params=None):
  """Runs tx over a list of gradient trees in one jitted scan.

  Returns (list of updates, final state, stacked per-step states).
  """
  params = params if params is not None else jax.tree.map(jnp.zeros_like, grads[0])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)

  @jax.jit
  def go(stacked, params):
    def body(state, g):
      u, state = tx.update(g, state, params)
      return state, (u, state)
    return jax.lax.scan(body, tx.init(params), stacked)

  state, (us, states) = go(stacked, params)
  outs = [jax.tree.map(lambda x, i=i: x[i], us) for i in range(len(grads))]
  return outs, state, states


class DenseReferenceTest(parameterized.TestCase):

  @parameterized.parameters(("shampoo2", -0.5), (-1.0, -1.0))
  def test_matrix_update_and_factors(self, exponent, e):
    rng = np.random.default_rng(0)
    b2, eps = 0.9, 1e-4
    grads = [_randn(rng, (5, 4)) for _ in range(8)]
    tx = scale_by_shampoo(b1=0.0, b2=b2, epsilon=eps, exponent=exponent,
                          graft_type="none", block_size=None)
    outs, state, _ = _run(tx, grads)
    stats = [np.zeros((5, 5)), np.zeros((4, 4))]
    for g in grads:
      stats = [b2 * s + (1 - b2) * n for s, n in zip(stats, _mode_stats(np.asarray(g, np.float64)))]
    for f, s in zip(state.leaves.factors, stats):
      np.testing.assert_allclose(f[0], s, rtol=1e-5, atol=1e-6)
    ref = _dense_power(stats, grads[-1], e, eps)
    np.testing.assert_allclose(outs[-1], ref, rtol=2e-3, atol=2e-4 * np.abs(ref).max())

  def test_classic_exponent_matrix_and_order3(self):
    rng = np.random.default_rng(1)
    grads = [{"m": _randn(rng, (5, 4)), "t": _randn(rng, (3, 4, 2))} for _ in range(8)]
    tx = scale_by_shampoo(b1=0.0, b2=1.0, epsilon=1e-4, exponent="classic",
                          graft_type="none", block_size=None)
    outs, state, _ = _run(tx, grads)
    for name, e in (("m", -0.25), ("t", -1.0 / 6.0)):
      stats = [sum(_mode_stats(np.asarray(g[name], np.float64))[i] for g in grads)
               for i in range(grads[0][name].ndim)]
      for f, s in zip(state.leaves[name].factors, stats):  # b2 = 1: running sums
        np.testing.assert_allclose(f[0], s, rtol=1e-5, atol=1e-5)
      ref = _dense_power(stats, grads[-1][name], e, 1e-4)
      np.testing.assert_allclose(outs[-1][name], ref, rtol=2e-3, atol=2e-4 * np.abs(ref).max())

  def test_power_factors(self):
    rng = np.random.default_rng(2)
    b2 = 0.8
    grads = [_randn(rng, (4, 3)) for _ in range(3)]
    tx = scale_by_shampoo(b1=0.0, b2=b2, graft_type="none", block_size=None,
                          factor_update="power")
    _, _, states = _run(tx, grads)
    g1 = np.asarray(grads[0], np.float64)
    # One power step from the identity is exactly Shampoo^2's factors.
    np.testing.assert_allclose(states.leaves.factors[0][0, 0], (1 - b2) * g1 @ g1.T, rtol=1e-5)
    np.testing.assert_allclose(states.leaves.factors[1][0, 0], (1 - b2) * g1.T @ g1, rtol=1e-5)
    norm = lambda f: np.eye(len(f)) if np.trace(f) <= 0 else f / (np.trace(f) / len(f))
    l, r = np.zeros((4, 4)), np.zeros((3, 3))
    for g in grads:
      g = np.asarray(g, np.float64)
      l, r = (b2 * l + (1 - b2) * g @ norm(r) @ g.T,
              b2 * r + (1 - b2) * g.T @ norm(l) @ g)
    np.testing.assert_allclose(states.leaves.factors[0][-1, 0], l, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states.leaves.factors[1][-1, 0], r, rtol=1e-5, atol=1e-6)
    self.assertFalse(np.allclose(r, sum((1 - b2) * b2 ** (2 - i) * np.asarray(g).T @ np.asarray(g)
                                        for i, g in enumerate(grads)), rtol=1e-3))

  def test_blocking_is_block_diagonal(self):
    rng = np.random.default_rng(3)
    eps, b2 = 1e-4, 0.9
    grads = [_randn(rng, (8, 6)) for _ in range(10)]
    tx = scale_by_shampoo(b1=0.0, b2=b2, epsilon=eps, graft_type="none",
                          block_size=4)
    outs, state, _ = _run(tx, grads)
    self.assertEqual(state.leaves.factors[0].shape, (4, 4, 4))  # 2x2 blocks
    ref = np.zeros((8, 6))
    for rows in (slice(0, 4), slice(4, 8)):
      for cols in (slice(0, 4), slice(4, 6)):  # last one zero padded to 4
        stats = [np.zeros((4, 4)), np.zeros((cols.stop - cols.start,) * 2)]
        for g in grads:
          blk = np.asarray(g, np.float64)[rows, cols]
          stats = [b2 * s + (1 - b2) * n for s, n in zip(stats, _mode_stats(blk))]
        ref[rows, cols] = _dense_power(stats, np.asarray(grads[-1])[rows, cols], -0.5, eps)
    np.testing.assert_allclose(outs[-1], ref, rtol=2e-3, atol=2e-4 * np.abs(ref).max())

  def test_layout_and_kron_identity(self):
    rng = np.random.default_rng(4)
    a, b, g = _randn(rng, (3, 3)), _randn(rng, (5, 5)), _randn(rng, (3, 5))
    y = kr.mode_product(g[None], [a[None], b[None]])[0]
    np.testing.assert_allclose(y.ravel(), np.kron(a, b) @ np.asarray(g).ravel(), rtol=1e-5, atol=1e-5)
    x = _randn(rng, (7, 1, 10, 3))
    lay = kr.block_layout(x.shape, block_size=4)
    self.assertEqual(lay.merged_shape, (7, 10, 3))
    self.assertEqual(lay.stacked_shape, (6, 4, 4, 3))
    np.testing.assert_array_equal(kr.from_blocks(kr.to_blocks(x, lay), lay), x)
    self.assertEqual(kr.merge_small_dims((3, 3, 64, 128), 1024), (576, 128))
    self.assertEqual(kr.merge_small_dims((6, 5), 1024), (6, 5))
    self.assertTrue(kr.block_layout((10,)).is_diagonal)
    self.assertEqual(kr.block_layout((2000, 8), max_precond_dim=1000).preconditioned, (False, True))
    self.assertEqual(resolve_exponent("newton", 2), -1.0)
    self.assertEqual(resolve_exponent("classic", 3), -1.0 / 6.0)


class RootTest(parameterized.TestCase):

  def test_newton_and_eigh_match_numpy(self):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 6, 10))
    mats = jnp.asarray(x @ x.transpose(0, 2, 1), jnp.float32)
    w, v = np.linalg.eigh(np.stack([_ridge(np.asarray(m, np.float64), 1e-3) for m in mats]))

    @jax.jit
    def roots(mats):
      return [(kr.inverse_root_newton(mats, p, 1e-3), kr.inverse_root_eigh(mats, -1.0 / p, 1e-3),
               kr.inverse_root_eigh(mats, -1.0 / p, 1e-3, float64=True)) for p in (1, 4)]

    for p, ((r_n, ok_n), (r_e, ok_e), (r_64, ok_64)) in zip((1, 4), roots(mats)):
      ref = (v * w[:, None, :] ** (-1.0 / p)) @ v.transpose(0, 2, 1)
      scale = np.abs(ref).max()
      self.assertTrue(np.all(ok_n) and np.all(ok_e) and np.all(ok_64))
      np.testing.assert_allclose(r_n, ref, atol=2e-3 * scale)
      np.testing.assert_allclose(r_e, ref, atol=2e-3 * scale)
      np.testing.assert_allclose(r_64, ref, atol=2e-5 * scale)

  def test_cpu_lapack_calls_see_one_matrix(self):
    # jaxlib's batched CPU eigh/QR wait on the intra-op pool they run in and
    # deadlock a root step with many of them; the optimizers must lower to
    # unbatched LAPACK calls on CPU and still give the batched answer.
    import re  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 6, 9))
    mats = jnp.asarray(x @ np.swapaxes(x, -1, -2), jnp.float32)
    fn = jax.jit(lambda m: (kr.eigh_descending(m), kr.qr_basis_update(m, jnp.eye(6) + 0 * m)))
    hlo = fn.lower(mats).as_text()
    calls = re.findall(r"custom_call @(lapack_\w+).*?num_batch_dims = \"(\d+)\"", hlo)
    self.assertContainsSubset({"lapack_ssyevd_ffi", "lapack_sgeqrf_ffi"}, {c for c, _ in calls})
    self.assertEqual({n for _, n in calls}, {"0"})
    (w, v), (q, _) = fn(mats)
    w_ref = np.linalg.eigh(np.asarray(mats, np.float64))[0][..., ::-1]
    np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-4 * np.abs(w_ref).max())
    np.testing.assert_allclose(v @ (w[..., None] * np.swapaxes(v, -1, -2)), mats,
                               atol=1e-4 * np.abs(w_ref).max())
    np.testing.assert_allclose(np.swapaxes(q, -1, -2) @ q, np.broadcast_to(np.eye(6), q.shape),
                               atol=1e-5)

  def test_newton_and_float64_optimizers_agree_with_eigh(self):
    rng = np.random.default_rng(7)
    grads = [_randn(rng, (6, 5)) for _ in range(8)]
    kw = dict(b1=0.0, b2=0.9, epsilon=1e-3, graft_type="none", block_size=None)
    out_e, _, _ = _run(scale_by_shampoo(**kw), grads)
    out_n, _, _ = _run(scale_by_shampoo(root_method="newton", **kw), grads)
    out_64, _, _ = _run(scale_by_shampoo(root_float64=True, **kw), grads)
    scale = np.abs(out_e[-1]).max()
    np.testing.assert_allclose(out_n[-1], out_e[-1], atol=5e-3 * scale)
    np.testing.assert_allclose(out_64[-1], out_e[-1], atol=5e-3 * scale)

  @parameterized.parameters(("shampoo2", "eigh", 2), ("classic", "eigh", 4),
                            ("shampoo2", "newton", 2))
  def test_diagnostics_against_numpy(self, exponent, method, p):
    rng = np.random.default_rng(10)
    grads = [_randn(rng, (6, 5)) for _ in range(3)]
    eps = 1e-3
    tx = scale_by_shampoo(b1=0.0, b2=0.9, epsilon=eps, graft_type="none", block_size=None,
                          exponent=exponent, root_method=method, root_float64=method == "eigh",
                          preconditioning_frequency=2, diagnostics=True)
    _, state, states = _run(tx, grads)
    self.assertIsNone(_run(scale_by_shampoo(block_size=None), grads[:1])[1].leaves.root_error)
    for axis in range(2):
      lam = np.asarray(states.leaves.max_eigenvalue[axis])[:, 0]
      err = np.asarray(states.leaves.root_error[axis])[:, 0]
      f = np.asarray(states.leaves.factors[axis], np.float64)[:, 0]
      # Roots (and diagnostics) at steps 1 and 3; step 2 keeps step 1's.
      for t in (0, 2):
        np.testing.assert_allclose(lam[t], np.linalg.eigvalsh(f[t]).max(), rtol=1e-4)
      self.assertEqual(lam[1], lam[0])
      self.assertTrue(np.all(err < 1e-3), err)
      # The residual is that of the stored root: a perturbed root shows up.
      root = np.asarray(state.leaves.roots[axis][0], np.float64)
      a = _ridge(f[2], eps)
      ref = np.linalg.norm(np.linalg.matrix_power(root, p) @ a - np.eye(len(a))) / np.sqrt(len(a))
      self.assertAlmostEqual(float(err[2]), ref, delta=2e-4)
      bad = kr.inverse_root_residual(jnp.asarray(f[2], jnp.float32),
                                     jnp.asarray(root * 1.01, jnp.float32), -1.0 / p, eps)
      self.assertGreater(float(bad), 0.01 * p)
    self.assertTrue(np.isnan(kr.inverse_root_residual(jnp.eye(3), jnp.eye(3), -0.3, eps)))

  def test_nonfinite_root_keeps_previous_and_counts(self):
    rng = np.random.default_rng(8)
    tx = scale_by_shampoo(b1=0.0, graft_type="none", block_size=None)
    bad = _randn(rng, (4, 3)).at[1, 2].set(jnp.nan)
    _, state, states = _run(tx, [_randn(rng, (4, 3)), bad])
    self.assertEqual(states.leaves.failures.tolist(), [0, 2])  # both factors
    for r in states.leaves.roots:
      self.assertFalse(np.allclose(r[0, 0], np.eye(r.shape[-1])))
      np.testing.assert_array_equal(r[1], r[0])

  def test_amortised_roots_and_graft_before_start(self):
    rng = np.random.default_rng(9)
    tx = scale_by_shampoo(b1=0.0, graft_type="adam", block_size=None,
                          start_preconditioning_step=2, preconditioning_frequency=3)
    grads = [_randn(rng, (4, 3)) for _ in range(8)]
    outs, _, states = _run(tx, grads)
    roots = np.concatenate([np.eye(4)[None], np.asarray(states.leaves.roots[0][:, 0])])
    changed = [not np.allclose(roots[t - 1], roots[t]) for t in range(1, 9)]
    self.assertEqual(changed, [t in (2, 5, 8) for t in range(1, 9)])
    a_outs, _, _ = _run(optax.scale_by_adam(b1=0.0, b2=0.999, eps=1e-8), grads)
    np.testing.assert_allclose(outs[0], a_outs[0], rtol=1e-5)  # step 1 < start
    self.assertFalse(np.allclose(outs[1], a_outs[1], rtol=1e-2))


class GraftAndDiagonalTest(parameterized.TestCase):

  @parameterized.parameters("adam", "sgd")
  def test_graft_norm_per_block(self, graft):
    rng = np.random.default_rng(10)
    grads = [_randn(rng, (8, 4)) for _ in range(3)]
    tx = scale_by_shampoo(b1=0.0, b2=0.99, graft_type=graft, block_size=4)
    outs, _, _ = _run(tx, grads)
    nu = np.zeros((8, 4))
    for t, g in enumerate(grads, 1):
      g = np.asarray(g, np.float64)
      nu = 0.99 * nu + 0.01 * g * g
      d = g / (np.sqrt(nu / (1 - 0.99 ** t)) + 1e-8) if graft == "adam" else g
    u = np.asarray(outs[-1])
    for rows in (slice(0, 4), slice(4, 8)):
      np.testing.assert_allclose(np.linalg.norm(u[rows]), np.linalg.norm(d[rows]), rtol=1e-4)
    self.assertFalse(np.allclose(u, d, rtol=1e-2))  # direction is not the graft's

  def test_vector_and_filtered_params_get_diagonal_update(self):
    rng = np.random.default_rng(11)
    params = {"bias": jnp.zeros(5), "embed": jnp.zeros((6, 3)), "w": jnp.zeros((3, 3))}
    grads = [jax.tree.map(lambda p: _randn(rng, p.shape), params) for _ in range(3)]
    tx = scale_by_shampoo(b1=0.0, b2=0.95, precondition_filter=embedding_filter())
    outs, state, _ = _run(tx, grads, params)
    self.assertEqual(state.leaves["bias"].factors, ())
    self.assertEqual(state.leaves["embed"].factors, ())
    self.assertLen(state.leaves["w"].factors, 2)
    nu = {k: np.zeros(p.shape) for k, p in params.items()}
    for t, g in enumerate(grads, 1):
      for k in ("bias", "embed"):
        gk = np.asarray(g[k], np.float64)
        nu[k] = 0.95 * nu[k] + 0.05 * gk * gk
    for k in ("bias", "embed"):
      ref = np.asarray(grads[-1][k]) / (np.sqrt(nu[k] / (1 - 0.95 ** 3)) + 1e-8)
      np.testing.assert_allclose(outs[-1][k], ref, rtol=1e-5)

  def test_running_sums_make_the_diagonal_adagrad(self):
    # b2 = 1: factors and diagonal second moments are running sums; the
    # fallback then has no bias correction to make (it used to divide by
    # 1 - 1^t = 0 and return zeros).
    rng = np.random.default_rng(17)
    params = {"bias": jnp.zeros(5), "w": jnp.zeros((4, 3))}
    grads = [jax.tree.map(lambda p: _randn(rng, p.shape), params) for _ in range(3)]
    outs, state, _ = _run(scale_by_shampoo(b1=0.0, b2=1.0, block_size=None), grads, params)
    gb = np.stack([np.asarray(g["bias"], np.float64) for g in grads])
    ref = gb[-1] / (np.sqrt(np.sum(gb ** 2, axis=0)) + 1e-8)
    np.testing.assert_allclose(outs[-1]["bias"], ref, rtol=1e-5)
    np.testing.assert_allclose(state.leaves["bias"].nu, np.sum(gb ** 2, axis=0), rtol=1e-5)
    gw = [np.asarray(g["w"], np.float64) for g in grads]
    np.testing.assert_allclose(state.leaves["w"].factors[0][0], sum(g @ g.T for g in gw),
                               rtol=1e-5)

  @parameterized.parameters(False, True)
  def test_momentum_stage_against_numpy(self, nesterov):
    rng = np.random.default_rng(18)
    us = [rng.normal(size=(3, 2)) for _ in range(4)]
    b1, m = 0.8, None
    m_ref = np.zeros((3, 2))
    for t, u in enumerate(us, 1):
      m, out = momentum([jnp.asarray(u, jnp.float32)],
                        [jnp.zeros((3, 2)) if m is None else m[0]],
                        jnp.asarray(t, jnp.int32), b1=b1, nesterov=nesterov)
      m_ref = b1 * m_ref + (1 - b1) * u
      ref = (b1 * m_ref / (1 - b1 ** (t + 1)) + (1 - b1) * u / (1 - b1 ** t) if nesterov
             else m_ref / (1 - b1 ** t))
      np.testing.assert_allclose(m[0], m_ref, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-6)

  def test_graft_blocks_against_numpy(self):
    rng = np.random.default_rng(19)
    y, graft = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 2))
    y[1] = 0.0
    out = np.asarray(graft_blocks(jnp.asarray(y, jnp.float32), jnp.asarray(graft, jnp.float32)))
    for n in (0, 2):
      ref = y[n] * np.linalg.norm(graft[n]) / np.linalg.norm(y[n])
      np.testing.assert_allclose(out[n], ref, rtol=1e-5)
    np.testing.assert_array_equal(out[1], 0.0)


def _quadratic_problems():
  rng = np.random.default_rng(12)
  n, d, k = 256, 12, 6
  x = rng.normal(size=(n, d)) * np.linspace(0.3, 2.0, d)
  w = rng.normal(size=(d, k))
  y = x @ w + 0.05 * rng.normal(size=(n, k))
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def _train(tx, loss_fn, params, steps, batch_fn=None):
  """`steps` optimizer steps in one jitted scan; returns (params, state)."""

  @jax.jit
  def go(params):
    def body(carry, key):
      params, state = carry
      g = jax.grad(loss_fn)(params, batch_fn(key) if batch_fn else None)
      u, state = tx.update(g, state, params)
      return (optax.apply_updates(params, u), state), None
    keys = jax.random.split(jax.random.PRNGKey(0), steps)
    return jax.lax.scan(body, (params, tx.init(params)), keys)[0]

  return go(params)


class ConvergenceTest(parameterized.TestCase):

  def test_parabola_and_rosenbrock(self):
    target = jnp.array([1.0, -2.0])
    parabola = lambda p, _: jnp.sum((p["a"] - target) ** 2)
    rosen = lambda p, _: (1 - p["b"][0]) ** 2 + 100 * (p["b"][1] - p["b"][0] ** 2) ** 2
    loss = lambda p, _: parabola(p, _) + rosen(p, _)
    p, _ = _train(shampoo(0.02, precondition_1d=True), loss,
                  {"a": jnp.zeros(2), "b": jnp.zeros(2)}, 1500)
    np.testing.assert_allclose(p["a"], target, atol=1e-2)
    np.testing.assert_allclose(p["b"], [1.0, 1.0], atol=5e-2)

  @parameterized.parameters(
      dict(factor_update="power"), dict(block_size=4, nesterov=True))
  def test_matrix_regression(self, **kw):
    x, y = _quadratic_problems()
    loss = lambda p, idx: jnp.mean((x[idx] @ p["w"] + p["b"] - y[idx]) ** 2)
    batch = lambda key: jax.random.randint(key, (32,), 0, x.shape[0])
    params = {"w": jnp.zeros((12, 6)), "b": jnp.zeros(6)}
    init = float(loss(params, jnp.arange(x.shape[0])))
    p, state = _train(shampoo(0.03, **kw), loss, params, 300, batch)
    final = float(loss(p, jnp.arange(x.shape[0])))
    self.assertLess(final, 0.05 * init)
    self.assertEqual(int(state[0].leaves["w"].failures), 0)

  def test_mlp(self):
    rng = np.random.default_rng(13)
    x = rng.normal(size=(512, 10)).astype(np.float32)
    teacher = rng.normal(size=(10, 3))
    labels = jnp.asarray(np.argmax(np.tanh(x @ teacher) + 0.1 * x[:, :3], -1))
    x = jnp.asarray(x)
    params = {"w1": _randn(rng, (10, 10)) * 0.5, "b1": jnp.zeros(10),
              "w2": _randn(rng, (10, 3)) * 0.5, "b2": jnp.zeros(3)}

    def loss(p, idx):
      h = jnp.tanh(x[idx] @ p["w1"] + p["b1"])
      logits = h @ p["w2"] + p["b2"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

    everything = jnp.arange(512)
    init = float(loss(params, everything))
    p, _ = _train(shampoo(3e-3, weight_decay=1e-4, preconditioning_frequency=5), loss, params, 300,
                  lambda key: jax.random.randint(key, (64,), 0, 512))
    self.assertLess(float(loss(p, everything)), 0.35 * init)


class IntegrationTest(parameterized.TestCase):

  def _params(self):
    rng = np.random.default_rng(14)
    return {"w": _randn(rng, (6, 4)), "v": _randn(rng, (4,))}

  def _grads(self, n):
    rng = np.random.default_rng(15)
    return [jax.tree.map(lambda p: _randn(rng, p.shape), self._params()) for _ in range(n)]

  def test_state_stable_no_recompile_and_bf16(self):
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), self._params())
    tx = shampoo(0.1, preconditioning_frequency=2)
    state = tx.init(params)
    upd = jax.jit(tx.update)
    grads = self._grads(3)
    for g in grads:
      u, new_state = upd(jax.tree.map(lambda x: x.astype(jnp.bfloat16), g), state, params)
      chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
      state = new_state
      self.assertEqual(u["w"].dtype, jnp.bfloat16)
    self.assertEqual(upd._cache_size(), 1)
    self.assertEqual(state[0].leaves["w"].factors[0].dtype, jnp.float32)
    self.assertEqual(state[0].mu["w"].dtype, jnp.float32)
    # The same steps in float32, in a jitted lax.scan (as _run does).
    outs32, _, _ = _run(tx, grads, jax.tree.map(lambda p: p.astype(jnp.float32), params))
    np.testing.assert_allclose(np.asarray(u["w"], np.float32), outs32[-1]["w"],
                               rtol=0.05, atol=0.02)

  def test_chain_inject_multisteps(self):
    params, grads = self._params(), self._grads(6)
    inj = optax.inject_hyperparams(shampoo, static_args=SHAMPOO_STATIC_ARGS)(
        learning_rate=0.1, block_size=4, preconditioning_frequency=2)
    ms = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), inj),
                          every_k_schedule=2)
    state = ms.init(params)
    upd = jax.jit(ms.update)
    for i, g in enumerate(grads):
      if i == 4:
        hp = state.inner_opt_state[1].hyperparams
        hp["learning_rate"] = jnp.zeros_like(hp["learning_rate"])
      u, state = upd(g, state, params)
      self.assertTrue(np.all(np.isfinite(u["w"])))
      self.assertEqual(bool(np.any(u["w"] != 0)), i in (1, 3))  # lr 0 at i=5
    self.assertEqual(upd._cache_size(), 1)


class ShardingTest(absltest.TestCase):

  def test_sharded_matches_single_device(self):
    if jax.device_count() < 8:
      self.skipTest("needs 8 (fake) devices")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(16)
    params = {"b": _randn(rng, (32,)), "big": _randn(rng, (48, 16))}
    grads = [jax.tree.map(lambda p: _randn(rng, p.shape), params) for _ in range(3)]
    specs = {"b": P("model"), "big": P("data", "model")}
    shard = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    tx = shampoo(0.1, block_size=16, preconditioning_frequency=2, epsilon=1e-4)

    def run(params, sharded):
      if sharded:
        params = jax.device_put(params, shard)
      state = tx.init(params)
      state_sh = jax.tree.map(lambda x: x.sharding, state)
      upd = jax.jit(tx.update, out_shardings=(shard, state_sh) if sharded else None)
      for g in grads:
        u, state = upd(jax.device_put(g, shard) if sharded else g, state, params)
        params = optax.apply_updates(params, u)
      return params, state, state_sh, upd

    p1, _, _, _ = run(params, False)
    p8, s8, sh0, upd = run(params, True)
    chex.assert_trees_all_close(p1, p8, rtol=1e-4, atol=1e-4)
    self.assertEqual(upd._cache_size(), 1)
    self.assertEqual(jax.tree.leaves(sh0), [x.sharding for x in jax.tree.leaves(s8)])
    # Param-shaped state follows the parameters; factors live on the mesh.
    self.assertEqual(s8[0].mu["big"].sharding, shard["big"])
    self.assertEqual(s8[0].leaves["big"].nu.sharding, shard["big"])
    self.assertEqual(s8[0].leaves["big"].factors[0].sharding,
                     NamedSharding(mesh, P()))


if __name__ == "__main__":
  absltest.main()
