"""Tests for the QOT inventory simulator, vendor constraints, policies and metrics."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import inventory as inv_data
from experiments.inventory import arrival_eval
from experiments.inventory import policies
from experiments.inventory import simulator as sim


# Unit tests are compile-bound: skip XLA's backend optimisations.
_FAST = {"xla_backend_optimization_level": 0}
_simulate = jax.jit(sim.simulate, static_argnums=(0, 1), compiler_options=_FAST,
                    static_argnames=("num_lags", "constrain", "charge_on_arrival", "unroll"))


def _static(n, num_lags, moq=0.0, batch=1.0, dtype=jnp.float32):
  f = lambda v: jnp.full((n,), v, dtype)
  vendor = inv_data.VendorProfile(
      base_lead=f(2.0), late_prob=f(0.2), split_logit=f(0.0), short_logit=f(-1.0),
      yield_a=f(4.0), yield_b=f(2.0), capacity=f(30.0))
  lt = jnp.full((n, num_lags), 1.0 / num_lags, dtype)
  return sim.Static(scale=f(10.0), cv=f(0.5), moq=f(moq), batch=f(batch), vendor=vendor,
                    vendor_features=jnp.zeros((n, 6), dtype), lead_time_probs=lt,
                    mean_lead_time=f((num_lags - 1) / 2.0), base_price=f(2.0))


def _exog(demand, price=2.0, cost=1.0, holding=0.1, horizon=4, rho=None, week=None):
  n, t = demand.shape
  dt = demand.dtype
  full = lambda v: jnp.full((n, t), v, dt)
  fc = jnp.broadcast_to(jnp.mean(demand) * jnp.ones((1, 1, horizon), dt), (n, t, horizon))
  if week is None:
    week = jnp.broadcast_to(jnp.arange(t) % 52, (n, t))
  return sim.Exog(demand=demand, price=full(price), cost=full(cost), holding=full(holding),
                  forecast=fc, week=jnp.asarray(week, jnp.int32), rho=rho)


def _reference_qot(demand, rho, policy, price, cost, holding, init_inv=0.0):
  """Loop-by-loop numpy reference: A_t = sum_j a_{t-j} rho_{t-j,j}."""
  n, t, num_lags = rho.shape
  inv = np.full(n, init_inv, np.float64)
  orders = np.zeros((n, t))
  out = {k: np.zeros((n, t)) for k in ("order", "arrivals", "sales", "inventory", "reward")}
  for s in range(t):
    open_qty = np.zeros((n, num_lags - 1))
    for age in range(1, num_lags):
      if s - age >= 0:
        got = orders[:, s - age] * rho[:, s - age, :age].sum(-1)
        open_qty[:, age - 1] = orders[:, s - age] - got
    a = policy(inv, open_qty)
    orders[:, s] = a
    arr = sum(orders[:, s - j] * rho[:, s - j, j] for j in range(num_lags) if s - j >= 0)
    avail = inv + arr
    sales = np.minimum(demand[:, s], avail)
    inv = avail - sales
    out["order"][:, s] = a
    out["arrivals"][:, s] = arr
    out["sales"][:, s] = sales
    out["inventory"][:, s] = inv
    out["reward"][:, s] = price * sales - cost * arr - holding * inv
  return out


class VendorConstraintTest(parameterized.TestCase):

  @parameterized.parameters((7.0, 3.0), (10.0, 4.0), (1.0, 1.0), (0.0, 5.0), (12.0, 12.0))
  def test_orders_are_zero_or_moq_multiples_of_batch(self, moq, batch):
    orders = jnp.asarray(np.random.default_rng(0).uniform(-5, 60, 2000), jnp.float32)
    out = np.asarray(sim.vendor_postprocess(orders, moq, batch))
    nonzero = out > 0
    self.assertTrue(np.all((out == 0) | (out >= moq - 1e-4)))
    np.testing.assert_allclose(out / batch, np.round(out / batch), atol=1e-4)
    # Orders at or above the MOQ move by at most half a batch (or up to the MOQ).
    big = np.asarray(orders) >= max(moq, 1e-9) + batch
    self.assertTrue(np.all(np.abs(out[big] - np.asarray(orders)[big]) <= batch / 2 + 1e-4))
    # Orders below threshold * MOQ are dropped.
    self.assertTrue(np.all(out[np.asarray(orders) < 0.5 * moq] == 0))
    self.assertGreater(nonzero.mean(), 0.5)

  def test_straight_through_gradient_is_identity(self):
    def f(a):
      return jnp.sum(3.0 * sim.straight_through(a, sim.vendor_postprocess(a, 7.0, 3.0)))
    a = jnp.asarray([0.5, 4.0, 11.2, 30.0])
    np.testing.assert_allclose(jax.grad(f)(a), 3.0 * np.ones(4))
    np.testing.assert_allclose(
        sim.straight_through(a, sim.vendor_postprocess(a, 7.0, 3.0)),
        sim.vendor_postprocess(a, 7.0, 3.0))


class NewsvendorTest(absltest.TestCase):
  """Lag 0, i.i.d. Uniform(0, 100) demand, lost sales: base-stock optimum."""

  def setUp(self):
    super().setUp()
    self.p, self.c, self.h, self.g = 5.0, 3.0, 0.4, 0.95
    self.n, self.t = 1000, 40
    self.demand = np.random.default_rng(1).uniform(0.0, 100.0, (self.n, self.t))
    self.exog = _exog(jnp.asarray(self.demand, jnp.float32), self.p, self.c, self.h)
    self.static = _static(self.n, 3)

  def _objective(self):
    exog, static, g = self.exog, self.static, self.g

    def objective(level):
      _, outs = sim.simulate(policies.base_stock_policy(level), sim.fixed_lag_arrivals(0, 3),
                             exog, static, jax.random.PRNGKey(0), constrain=False)
      return jnp.mean(sim.discounted_return(outs.reward, g))
    return objective

  def _sample_path_optimum(self):
    """argmax of the piecewise-linear sample objective (weighted quantile).

    dG/dS = -c - h G_T + sum_t w_t P_emp(D_t > S), w_t = g^t (p + h) - c g^{t+1} [t < T-1].
    """
    p, c, h, g, t = self.p, self.c, self.h, self.g, self.t
    w = g ** np.arange(t) * (p + h) - c * g ** (np.arange(t) + 1) * (np.arange(t) < t - 1)
    target = c + h * np.sum(g ** np.arange(t))
    d = self.demand.ravel()
    wd = np.broadcast_to(w, self.demand.shape).ravel() / self.n
    order = np.argsort(-d)
    cum = np.cumsum(wd[order])  # weight of samples > S as S decreases
    return d[order][np.searchsorted(cum, target)]

  def test_fractile_formula_limits(self):
    p, c, h, g = self.p, self.c, self.h, self.g
    inf = (p - c) / (p + h - g * c)
    self.assertAlmostEqual(policies.newsvendor_fractile(p, c, h, g), inf)
    self.assertAlmostEqual(policies.newsvendor_fractile(p, c, h, g, horizon=3000), inf, places=6)
    # gamma = 0 (leftovers are worthless) gives the one-period (p - c) / (p + h);
    # gamma = 1, h = 0 (free, lossless storage) never stocks out: F = 1.
    self.assertAlmostEqual(policies.newsvendor_fractile(p, c, h, 0.0), (p - c) / (p + h))
    self.assertAlmostEqual(policies.newsvendor_fractile(p, c, 0.0, 1.0), 1.0)

  def test_grid_and_gradient_optimum_match_critical_fractile(self):
    objective = self._objective()
    s_emp = self._sample_path_optimum()
    # Analytic finite-horizon fractile for Uniform(0, 100): S* = 100 F*.
    s_analytic = 100.0 * policies.newsvendor_fractile(self.p, self.c, self.h, self.g, self.t)
    self.assertAlmostEqual(s_emp, s_analytic, delta=1.0)
    # Grid search.
    grid = np.linspace(62.0, 94.0, 161)
    values = np.asarray(jax.jit(jax.vmap(objective), compiler_options=_FAST)(
        jnp.asarray(grid, jnp.float32)))
    s_grid = grid[np.argmax(values)]
    self.assertAlmostEqual(s_grid, s_emp, delta=0.6)
    self.assertAlmostEqual(s_grid, s_analytic, delta=1.2)
    # Gradient ascent through the simulator.
    grad = jax.jit(jax.grad(objective), compiler_options=_FAST)
    level = jnp.asarray(30.0)
    for i in range(200):
      lr = 2.0 / (1.0 + i / 20.0)
      level = level + lr * grad(level)
    self.assertAlmostEqual(float(level), s_emp, delta=0.6)
    # The infinite-horizon fractile is the T -> inf limit; at T = 40 with
    # gamma = 0.95 it is close to the finite one.
    self.assertAlmostEqual(
        100.0 * policies.newsvendor_fractile(self.p, self.c, self.h, self.g), s_analytic, delta=2.0)


class SimulatorTest(parameterized.TestCase):

  def test_qot_matches_numpy_reference_and_conserves_inventory(self):
    rng = np.random.default_rng(2)
    n, t, num_lags = 64, 30, 5
    demand = rng.gamma(2.0, 5.0, (n, t))
    raw = rng.dirichlet(np.ones(num_lags) * 0.5, (n, t)) * rng.uniform(0.6, 1.0, (n, t, 1))
    rho = raw.astype(np.float32)
    level = 35.0
    exog = _exog(jnp.asarray(demand, jnp.float32), rho=jnp.asarray(rho))
    _, outs = _simulate(policies.base_stock_policy(level), sim.replay_arrivals, exog,
                           _static(n, num_lags), jax.random.PRNGKey(0), constrain=False,
                           num_lags=num_lags)
    ref = _reference_qot(demand, rho.astype(np.float64),
                         lambda inv, op: np.maximum(level - inv - op.sum(-1), 0.0),
                         2.0, 1.0, 0.1)
    for k in ref:
      np.testing.assert_allclose(np.asarray(getattr(outs, k)), ref[k], rtol=1e-4, atol=1e-3)
    # Conservation each week: I_t + A_t = S_t + I_{t+1}.
    start = np.concatenate([np.zeros((n, 1)), np.asarray(outs.inventory)[:, :-1]], 1)
    np.testing.assert_allclose(start + np.asarray(outs.arrivals),
                               np.asarray(outs.sales) + np.asarray(outs.inventory),
                               rtol=1e-5, atol=1e-3)
    self.assertTrue(np.all(np.asarray(outs.sales) <= demand + 1e-4))
    self.assertTrue(np.all(np.asarray(outs.inventory) >= -1e-4))

  def test_true_process_conservation_with_outstanding(self):
    n, t, num_lags = 200, 40, 8
    rng = np.random.default_rng(3)
    demand = jnp.asarray(rng.gamma(2.0, 5.0, (n, t)), jnp.float32)
    static = _static(n, num_lags, moq=6.0, batch=3.0)
    state0 = sim.init_state(n, num_lags, 20.0)
    final, outs = _simulate(policies.newsvendor_policy(0.99), sim.true_arrivals(num_lags),
                               _exog(demand, horizon=num_lags), static,
                               jax.random.PRNGKey(1), state0)
    # Start + all arrivals = sales + end inventory.
    np.testing.assert_allclose(20.0 + np.asarray(outs.arrivals).sum(1),
                               np.asarray(outs.sales).sum(1) + np.asarray(final.inventory),
                               rtol=1e-5, atol=1e-2)
    # Everything ordered arrives (times its yield), now or still in the pipeline.
    delivered = (np.asarray(outs.order) * np.asarray(outs.rho).sum(-1)).sum(1)
    np.testing.assert_allclose(np.asarray(outs.arrivals).sum(1) + np.asarray(final.sched).sum((1, 2)),
                               delivered, rtol=1e-5, atol=1e-2)
    # Orders respect the vendor constraints.
    o = np.asarray(outs.order)
    self.assertTrue(np.all((o == 0) | (o >= 6.0 - 1e-4)))
    np.testing.assert_allclose(o / 3.0, np.round(o / 3.0), atol=1e-4)

  def test_per_product_keys_make_products_independent(self):
    """With one key per product, a product's trajectory does not depend on
    which other products are simulated with it (true, random arrivals)."""
    n, t, num_lags = 6, 20, 5
    # The same demand for every product: only the keys tell them apart.
    demand = np.broadcast_to(np.random.default_rng(8).gamma(2.0, 5.0, (1, t)), (n, t))
    exog = _exog(jnp.asarray(demand, jnp.float32), horizon=num_lags)
    static = _static(n, num_lags, moq=6.0, batch=3.0)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n))
    policy = policies.newsvendor_policy(0.99)
    arrivals = sim.true_arrivals(num_lags)
    _, full = _simulate(policy, arrivals, exog, static, keys, sim.init_state(n, num_lags, 10.0))
    sub = np.asarray([4, 1])
    _, part = _simulate(policy, arrivals, sim.take_products(exog, sub),
                        sim.take_products(static, sub), keys[sub],
                        sim.init_state(2, num_lags, 10.0))
    for field in ("order", "arrivals", "sales", "reward", "rho"):
      np.testing.assert_allclose(np.asarray(getattr(part, field)),
                                 np.asarray(getattr(full, field))[sub], rtol=1e-6, atol=1e-6)
    # The keys matter: products with the same inputs draw different shares.
    self.assertGreater(np.abs(np.asarray(full.rho)[0] - np.asarray(full.rho)[2]).max(), 0.1)

  def test_one_hot_shares_reproduce_lead_time_simulator(self):
    rng = np.random.default_rng(4)
    n, t, num_lags = 50, 35, 6
    demand = rng.gamma(2.0, 5.0, (n, t))
    lags = rng.integers(0, num_lags, (n, t))
    rho = np.eye(num_lags, dtype=np.float32)[lags]
    exog = _exog(jnp.asarray(demand, jnp.float32), rho=jnp.asarray(rho))
    policy = policies.base_stock_policy(40.0)
    _, qot = _simulate(policy, sim.replay_arrivals, exog, _static(n, num_lags),
                          jax.random.PRNGKey(0), constrain=False, num_lags=num_lags)
    # Classic lead-time simulator: order a_t arrives whole in week t + l_t.
    inv = np.zeros(n)
    pipeline = np.zeros((n, t + num_lags))
    for s in range(t):
      a = np.maximum(40.0 - inv - pipeline[:, s + 1:].sum(1) - pipeline[:, s], 0.0)
      pipeline[np.arange(n), s + lags[:, s]] += a
      avail = inv + pipeline[:, s]
      sales = np.minimum(demand[:, s], avail)
      inv = avail - sales
      np.testing.assert_allclose(np.asarray(qot.order)[:, s], a, rtol=1e-5, atol=1e-3)
      np.testing.assert_allclose(np.asarray(qot.sales)[:, s], sales, rtol=1e-5, atol=1e-3)
      np.testing.assert_allclose(np.asarray(qot.inventory)[:, s], inv, rtol=1e-5, atol=1e-3)
    # ... and the built-in lead-time arrival model draws exactly one-hot shares.
    static = _static(n, num_lags)._replace(
        lead_time_probs=jnp.asarray(np.eye(num_lags)[rng.integers(0, num_lags, n)]))
    _, lt = _simulate(policy, sim.lead_time_arrivals(num_lags), exog, static,
                         jax.random.PRNGKey(0))
    self.assertTrue(np.all(np.asarray(lt.rho).max(-1) == 1.0))
    np.testing.assert_allclose(np.asarray(lt.rho).argmax(-1),
                               np.broadcast_to(np.asarray(static.lead_time_probs).argmax(-1)[:, None], (n, t)))

  def test_gradients_match_finite_differences(self):
    with jax.enable_x64(True):
      rng = np.random.default_rng(5)
      n, t, num_lags = 16, 20, 4
      demand = jnp.asarray(rng.gamma(2.0, 5.0, (n, t)))
      rho = jnp.asarray(rng.dirichlet(np.ones(num_lags), (n, t)) * 0.9)
      exog = _exog(demand, rho=rho)
      static = _static(n, num_lags, dtype=jnp.float64)
      key = jax.random.PRNGKey(0)

      def ret(theta):
        level, mult = theta[0], theta[1]
        def policy(obs):
          position = policies.inventory_position(obs)
          return mult * jnp.maximum(level - position, 0.0) + 0.1 * obs.x.forecast[0]
        _, outs = sim.simulate(policy, sim.replay_arrivals, exog, static, key,
                               sim.init_state(n, num_lags, 5.0), constrain=False)
        return jnp.mean(sim.discounted_return(outs.reward, 0.97))

      ret_jit = jax.jit(ret, compiler_options=_FAST)
      theta = jnp.asarray([23.7, 0.83])
      g = np.asarray(jax.jit(jax.grad(ret), compiler_options=_FAST)(theta))
      eps = 1e-5
      for i in range(2):
        e = np.zeros(2)
        e[i] = eps
        fd = (float(ret_jit(theta + e)) - float(ret_jit(theta - e))) / (2 * eps)
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, atol=1e-7)
      self.assertGreater(np.abs(g).max(), 1e-3)


class MetricsTest(absltest.TestCase):

  def test_crps_matches_bruteforce_and_normal_closed_form(self):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(50, 7))
    y = rng.normal(size=7)
    brute = np.abs(x - y).mean(0) - 0.5 * np.abs(x[:, None] - x[None]).mean((0, 1))
    crps = jax.jit(arrival_eval.crps_from_samples, compiler_options=_FAST)
    np.testing.assert_allclose(crps(jnp.asarray(x), jnp.asarray(y)), brute, rtol=1e-5, atol=1e-6)
    # Large-sample CRPS of N(0, 1) at y: y(2 Phi(y) - 1) + 2 phi(y) - 1/sqrt(pi).
    from scipy import stats
    big = np.broadcast_to(rng.normal(size=(20000, 1)), (20000, 3))
    ys = np.asarray([-1.0, 0.3, 2.0])
    closed = ys * (2 * stats.norm.cdf(ys) - 1) + 2 * stats.norm.pdf(ys) - 1 / np.sqrt(np.pi)
    np.testing.assert_allclose(crps(jnp.asarray(big), jnp.asarray(ys)), closed, atol=0.01)

  def test_quantile_loss_and_calibration(self):
    ql = arrival_eval.quantile_loss
    np.testing.assert_allclose(ql(jnp.asarray(1.0), jnp.asarray(3.0), 0.9), 1.8)
    np.testing.assert_allclose(ql(jnp.asarray(3.0), jnp.asarray(1.0), 0.9), 0.2,
                               rtol=1e-6)
    rng = np.random.default_rng(7)
    truth = rng.dirichlet(np.ones(4), 400).astype(np.float32)
    same = rng.dirichlet(np.ones(4), (300, 400)).astype(np.float32)
    m = arrival_eval.cumulative_receipt_metrics(jnp.asarray(same), jnp.asarray(truth))
    np.testing.assert_allclose(m["calibration_observed"], m["calibration_levels"], atol=0.06)
    wrong = np.broadcast_to(np.eye(4, dtype=np.float32)[3], (300, 400, 4))
    m_wrong = arrival_eval.cumulative_receipt_metrics(jnp.asarray(wrong), jnp.asarray(truth))
    self.assertGreater(m_wrong["crps"], 2 * m["crps"])


class ArrivalProcessTest(absltest.TestCase):

  def test_true_shares_valid_and_order_dependent(self):
    n = 4000
    f = lambda v: jnp.full((n,), v)
    vendor = inv_data.VendorProfile(base_lead=f(2.0), late_prob=f(0.2), split_logit=f(0.0),
                                    short_logit=f(-1.0), yield_a=f(4.0), yield_b=f(2.0),
                                    capacity=f(30.0))
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    draw = jax.jit(jax.vmap(inv_data.true_arrival_shares, in_axes=(0, None, 0, None, None)),
                   static_argnums=(4,), compiler_options=_FAST)
    small = np.asarray(draw(keys, 5.0, vendor, jnp.int32(10), 10))
    large = np.asarray(draw(keys, 150.0, vendor, jnp.int32(10), 10))
    peak = np.asarray(draw(keys, 5.0, vendor, jnp.int32(45), 10))
    for r in (small, large, peak):
      self.assertTrue(np.all(r >= 0))
      self.assertTrue(np.all(r.sum(-1) <= 1 + 1e-5))
    # Large orders split into more shipments and are short more often.
    n_ship = lambda r: (r > 1e-6).sum(-1).mean()
    self.assertGreater(n_ship(large), n_ship(small) + 0.5)
    self.assertLess(large.sum(-1).mean(), small.sum(-1).mean() - 0.05)
    # Holiday congestion delays the first receipt.
    lag = lambda r: inv_data.first_receipt_lag(r).mean()
    self.assertGreater(lag(peak), lag(small) + 0.7)
    # No arrivals before the base lead time.
    self.assertTrue(np.all(small[:, :2] == 0))


if __name__ == "__main__":
  absltest.main()
