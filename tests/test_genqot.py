"""Tests for the Gen-QOT arrival model and the policy network."""
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import integrate

from models import genqot as gq

# Unit tests are compile-bound: skip XLA's backend optimisations.
_FAST = {"xla_backend_optimization_level": 0}


def _jit(fn, **kw):
  return jax.jit(fn, compiler_options=_FAST, **kw)


def _kumaraswamy_cdf(u, a, b):
  return 1.0 - (1.0 - u**a) ** b


class StepDistTest(absltest.TestCase):

  def test_log_prob_normalises(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3))
    ab = rng.uniform(1.2, 5.0, (4, 2))
    lo, hi = gq.FULL_TOL, 1.0 - gq.FULL_TOL
    grid = np.linspace(lo, hi, 400001)

    @_jit
    def probs(logits, a, b):
      d = gq.StepDist(logits[:, None], a[:, None], b[:, None])
      u = jnp.concatenate([jnp.zeros((1,)), jnp.ones((1,)), jnp.asarray(grid, jnp.float32)])
      return jnp.exp(d.log_prob(jnp.broadcast_to(u, (4, u.size))))

    p = np.asarray(probs(jnp.asarray(logits, jnp.float32), jnp.asarray(ab[:, 0], jnp.float32),
                         jnp.asarray(ab[:, 1], jnp.float32)), np.float64)
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(p[:, :2], soft[:, :2], rtol=1e-5)
    # Densities are bounded for a, b > 1, so the trapezoid rule is accurate.
    mass = integrate.trapezoid(p[:, 2:], grid, axis=-1)
    a, b = ab[:, 0], ab[:, 1]
    expect = soft[:, 2] * (_kumaraswamy_cdf(hi, a, b) - _kumaraswamy_cdf(lo, a, b))
    np.testing.assert_allclose(mass, expect, atol=2e-4)
    np.testing.assert_allclose(p[:, 0] + p[:, 1] + mass, 1.0, atol=2e-3)

  def test_sampler_matches_distribution(self):
    logits = jnp.asarray([0.2, -0.5, 0.7])
    a, b = 2.5, 1.7
    d = gq.StepDist(jnp.broadcast_to(logits, (40000, 3)), jnp.full((40000,), a),
                    jnp.full((40000,), b))
    u, mean = _jit(lambda d: (d.sample(jax.random.PRNGKey(0)), d.mean()))(d)
    u = np.asarray(u)
    probs = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum()
    self.assertAlmostEqual((u == 0).mean(), probs[0], delta=0.01)
    self.assertAlmostEqual((u == 1).mean(), probs[1], delta=0.01)
    part = u[(u > 0) & (u < 1)]
    for q in (0.2, 0.5, 0.8):
      self.assertAlmostEqual((part <= q).mean(), _kumaraswamy_cdf(q, a, b), delta=0.015)
    self.assertAlmostEqual(u.mean(), float(mean[0]), delta=0.01)


class GenQOTTest(absltest.TestCase):

  def test_fraction_round_trip(self):
    rng = np.random.default_rng(1)
    rho = rng.dirichlet(np.ones(6) * 0.4, 50) * rng.uniform(0.5, 1.0, (50, 1))
    rho[:5] = np.eye(6)[rng.integers(0, 6, 5)]  # complete orders: later lags masked.
    u, rem, mask = (np.asarray(v) for v in gq.shares_to_fractions(jnp.asarray(rho)))
    r = np.ones(50)
    rebuilt = np.zeros_like(rho)
    for j in range(6):
      rebuilt[:, j] = r * u[:, j]
      r = r * (1 - u[:, j])
    np.testing.assert_allclose(rebuilt, rho, atol=1e-6)
    np.testing.assert_allclose(rem[:, 0], 1.0)
    for i in range(5):
      lag = int(np.argmax(rho[i]))
      self.assertTrue(np.all(mask[i, :lag + 1]) and not np.any(mask[i, lag + 1:]))

  def test_likelihood_masking_samples_and_sampler_agreement(self):
    model = gq.GenQOT(num_lags=4, hidden=8)
    rng = np.random.default_rng(2)
    n = 20000
    x = np.broadcast_to(np.asarray([[0.3, -1.2]], np.float32), (n, 2)).copy()
    x[:64] = rng.normal(size=(64, 2))
    rho = np.zeros((n, 4), np.float32)
    rho[:64] = rng.dirichlet(np.ones(4), 64) * rng.uniform(0.5, 1, (64, 1))
    rho[:4] = np.eye(4)  # complete orders: later lags are masked out.
    rho[64:] = [0.0, 1.0, 0.0, 0.0]
    x, rho = jnp.asarray(x), jnp.asarray(rho)
    params = _jit(model.init)(jax.random.PRNGKey(5), x[:2], rho[:2])
    # Make the conditionals far from uniform.
    params = jax.tree_util.tree_map(lambda p: p * 3.0, params)

    @_jit
    def fns(params):
      ll = model.apply(params, x, rho)
      steps = model.apply(params, x, rho, method=model.step_log_probs)
      smp = model.apply(params, x, jax.random.PRNGKey(3), method=model.sample)
      return ll, steps, smp

    ll, steps, smp = (np.asarray(v) for v in fns(params))
    _, _, mask = gq.shares_to_fractions(rho)
    np.testing.assert_allclose(ll, np.where(np.asarray(mask), steps, 0).sum(-1), rtol=1e-5)
    self.assertTrue(np.all(np.isfinite(ll)))
    # Row 0 arrived whole at lag 0: only that lag is scored.
    self.assertAlmostEqual(float(ll[0]), float(steps[0, 0]), places=4)
    self.assertTrue(np.all(smp >= 0))
    self.assertTrue(np.all(smp.sum(-1) <= 1 + 1e-5))
    # The sampler draws from the distribution the likelihood scores:
    # P(rho_0 = 0) and P(rho_1 = 1 | rho_0 = 0) for the repeated feature row.
    s = smp[64:]
    p_zero = float(np.exp(steps[64, 0]))
    self.assertAlmostEqual(float(np.mean(s[:, 0] == 0)), p_zero, delta=0.012)
    cond = s[:, 0] == 0
    p_full1 = float(np.exp(steps[64, 1]))
    self.assertAlmostEqual(float(np.mean(s[cond, 1] == 1.0)), p_full1, delta=0.02)

  def test_learns_feature_dependent_arrivals(self):
    """x = -1: whole order at lag 1 (70%) or 3 (30%); x = +1: share s ~ U(.2,.8)
    at lag 0, the rest at lag 2, then 10% short (yield 0.8 on the rest)."""
    rng = np.random.default_rng(3)
    n, num_lags = 4096, 5
    sign = rng.choice([-1.0, 1.0], n)
    rho = np.zeros((n, num_lags), np.float32)
    neg = sign < 0
    lag = np.where(rng.random(n) < 0.7, 1, 3)
    rho[neg, lag[neg]] = 1.0
    s = rng.uniform(0.2, 0.8, n)
    short = rng.random(n) < 0.1
    rho[~neg, 0] = s[~neg]
    rho[~neg, 2] = np.where(short, 0.8, 1.0)[~neg] * (1 - s[~neg])
    x = jnp.asarray(np.stack([sign, np.zeros(n)], -1), jnp.float32)
    rho = jnp.asarray(rho)
    model = gq.GenQOT(num_lags=num_lags, hidden=16)
    params = _jit(model.init)(jax.random.PRNGKey(0), x[:2], rho[:2])
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, 400, 0.05))

    @_jit
    def train(params):
      def body(carry, i):
        params, st = carry
        idx = jax.random.randint(jax.random.PRNGKey(i), (256,), 0, n)
        loss, g = jax.value_and_grad(lambda p: -jnp.mean(model.apply(p, x[idx], rho[idx])))(params)
        upd, st = opt.update(g, st, params)
        return (optax.apply_updates(params, upd), st), loss
      (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(400))
      xs = jnp.asarray([[-1.0, 0.0]] * 4000 + [[1.0, 0.0]] * 4000)
      return losses, model.apply(params, xs, jax.random.PRNGKey(7), method=model.sample)

    losses, smp = (np.asarray(v) for v in train(params))
    self.assertLess(losses[-20:].mean(), losses[:5].mean() - 2.0)
    neg_s, pos_s = smp[:4000], smp[4000:]
    first = np.argmax(neg_s > 1e-6, -1)
    self.assertAlmostEqual((first == 1).mean(), 0.7, delta=0.06)
    self.assertAlmostEqual((first == 3).mean(), 0.3, delta=0.06)
    self.assertAlmostEqual(neg_s.sum(-1).mean(), 1.0, delta=0.03)
    self.assertAlmostEqual(pos_s[:, 0].mean(), 0.5, delta=0.05)
    self.assertAlmostEqual(pos_s[:, 0].std(), 0.6 / np.sqrt(12), delta=0.05)
    self.assertAlmostEqual(pos_s.sum(-1).mean(), 1.0 - 0.1 * 0.2 * 0.5, delta=0.03)
    self.assertLess(pos_s[:, [1, 3, 4]].sum(-1).mean(), 0.03)


class PolicyNetTest(absltest.TestCase):

  def test_non_negative_and_initial_output(self):
    net = gq.PolicyNet(hidden=(8, 8), init_bias=0.55)
    f = jnp.asarray(np.random.default_rng(4).normal(size=(10, 7)) * 5, jnp.float32)
    params = _jit(net.init)(jax.random.PRNGKey(0), f)
    out = np.asarray(_jit(net.apply)(params, f))
    self.assertEqual(out.shape, (10,))
    np.testing.assert_allclose(out, np.log1p(np.exp(0.55)), rtol=1e-5)
    params = jax.tree_util.tree_map(lambda p: p + 1.0, params)
    out = np.asarray(_jit(net.apply)(params, f))
    self.assertTrue(np.all(out >= 0) and np.std(out) > 0)


if __name__ == "__main__":
  absltest.main()
