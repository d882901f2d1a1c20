"""Margins, theoretical maxima, max-margin constructions and feature tools."""
import math

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from data_pipelines import algebraic_tasks as data
from experiments.margins import fourier
from experiments.margins import group_reps
from experiments.margins import margins
from models import algebraic_nets as models


def _np_two_input(params, inputs, act=lambda z: z ** 2):
  """Dense reference: f(a,b)[c] = sum_i act(u_i[a] + v_i[b]) w_i[c]."""
  u, v, w = (np.asarray(params[k], np.float64) for k in "uvw")
  out = np.zeros((len(inputs), w.shape[1]))
  for n, (a, b) in enumerate(inputs):
    for i in range(u.shape[0]):
      out[n] += act(u[i, a] + v[i, b]) * w[i]
  return out


def _np_margin(logits, labels):
  out = []
  for row, y in zip(logits, labels):
    others = [row[j] for j in range(len(row)) if j != y]
    out.append(row[y] - max(others))
  return np.array(out)


def _np_norm_pow(params, nu):
  total = 0.0
  m = next(iter(params.values())).shape[0]
  for i in range(m):
    sq = sum(float(np.sum(np.asarray(p[i], np.float64) ** 2))
             for p in params.values())
    total += sq ** (nu / 2)
  return total


def _f64(params):
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


class MarginTest(absltest.TestCase):

  def test_margins_hand_built(self):
    logits = np.array([[3.0, 1.0, 2.5], [0.0, -1.0, 4.0], [1.0, 1.0, 0.0]])
    labels = np.array([0, 1, 2])
    np.testing.assert_allclose(np.asarray(margins.margins(logits, labels)),
                               [0.5, -5.0, -1.0])

  def test_normalized_margin_matches_dense_reference(self):
    rng = np.random.default_rng(0)
    p, m = 5, 4
    params = {"u": rng.normal(size=(m, p)), "v": rng.normal(size=(m, p)),
              "w": rng.normal(size=(m, p))}
    ds = data.modular_addition(p)
    net = models.TwoInputNet(p, p, m)
    logits = _np_two_input(params, ds.inputs)
    np.testing.assert_allclose(
        np.asarray(net.apply({k: jnp.asarray(v) for k, v in params.items()},
                             jnp.asarray(ds.inputs))), logits, rtol=1e-5,
        atol=1e-5)
    # One-hot inputs give the same network.
    np.testing.assert_allclose(
        np.asarray(net.apply(params, jnp.asarray(
            data.one_hot_pairs(ds.inputs, p)))), logits, rtol=1e-4, atol=1e-4)
    expect = _np_margin(logits, ds.labels).min() / _np_norm_pow(params, 3)
    got = float(margins.normalized_margin(net, params, ds.inputs, ds.labels))
    self.assertAlmostEqual(got, expect, delta=1e-5 * abs(expect))
    np.testing.assert_allclose(
        float(models.l2nu_norm(params, 3)), _np_norm_pow(params, 3) ** (1 / 3),
        rtol=1e-5)

  def test_hand_built_single_neuron(self):
    # p = 3, one neuron u = e_0, v = e_0, w = (1, 0, -1).
    params = {"u": np.array([[1.0, 0, 0]]), "v": np.array([[1.0, 0, 0]]),
              "w": np.array([[1.0, 0, -1.0]])}
    net = models.TwoInputNet(3, 3, 1)
    ds = data.modular_addition(3)
    # hidden = [a == 0] + [b == 0], logits = hidden^2 (1, 0, -1).
    # (0, 0): logits (4, 0, -4), label 0 -> margin 4; (0, 1): (1, 0, -1),
    # label 1 -> -1; (0, 2): label 2 -> -1 - 1 = -2; (1, 1): logits 0 -> 0.
    marg = np.asarray(margins.margins(net.apply(params, ds.inputs),
                                      ds.labels))
    np.testing.assert_array_equal(marg, [4, -1, -2, -1, 0, 0, -2, 0, 0])
    # ||theta_1||^2 = 1 + 1 + 2, so ||theta||_{2,3}^3 = 4^1.5 = 8.
    self.assertAlmostEqual(
        float(margins.normalized_margin(net, params, ds.inputs, ds.labels)),
        -2.0 / 8.0, places=6)

  def test_relu_variants(self):
    rng = np.random.default_rng(2)
    p, m = 5, 6
    params = {k: rng.normal(size=(m, p)) for k in "uvw"}
    net = models.TwoInputNet(p, p, m, activation="relu")
    self.assertEqual(net.homogeneity, 2)
    ds = data.modular_addition(p)
    ref = _np_two_input(params, ds.inputs, act=lambda z: max(z, 0.0))
    np.testing.assert_allclose(np.asarray(net.apply(params, ds.inputs)), ref,
                               rtol=1e-5, atol=1e-5)
    # Normalised margin is invariant to scaling theta (nu = 2).
    scaled = {k: 3.0 * v for k, v in params.items()}
    a = float(margins.normalized_margin(net, params, ds.inputs, ds.labels))
    b = float(margins.normalized_margin(net, scaled, ds.inputs, ds.labels))
    self.assertAlmostEqual(a, b, delta=1e-5 * abs(a))
    pnet = models.ParityNet(4, 3, activation="relu")
    self.assertEqual(pnet.homogeneity, 2)
    pp = {"u": rng.normal(size=(3, 4)), "w": rng.normal(size=(3, 2))}
    x = data.all_sign_vectors(4)
    np.testing.assert_allclose(np.asarray(pnet.apply(pp, x)),
                               np.maximum(x @ pp["u"].T, 0) @ pp["w"],
                               rtol=1e-5, atol=1e-5)

  def test_homogeneity_follows_activation(self):
    # nu is read off the forward pass: f(c theta) = c^nu f(theta). "quadratic"
    # and "power" both compute z^degree, so they must report the same nu.
    rng = np.random.default_rng(3)
    nets = [(models.TwoInputNet(5, 5, 4, activation=a), data.modular_addition(5).inputs)
            for a in ("quadratic", "power", "relu")]
    x = data.all_sign_vectors(6).astype(np.float32)
    nets += [(models.ParityNet(6, 4, degree=3, activation=a), x)
             for a in ("power", "quadratic", "relu")]
    for net, inputs in nets:
      shapes = {"u": (4, net.input_dim if isinstance(net, models.ParityNet)
                      else 5), "w": (4, net.num_classes)}
      if isinstance(net, models.TwoInputNet):
        shapes["v"] = (4, 5)
      params = {k: np.abs(rng.normal(size=s)) + 0.1 for k, s in shapes.items()}
      f1 = np.asarray(net.apply(params, inputs), np.float64)
      f2 = np.asarray(net.apply({k: 2.0 * v for k, v in params.items()},
                                inputs), np.float64)
      nu = np.log2(np.abs(f2).sum() / np.abs(f1).sum())
      self.assertAlmostEqual(nu, net.homogeneity, delta=1e-3,
                             msg=f"{net}")
    # So the max-margin construction scores exactly 1 under either name.
    p = 5
    params = margins.modular_addition_construction(p)
    ds = data.modular_addition(p)
    best = margins.max_margin_modular_addition(p)
    for act in ("quadratic", "power"):
      net = models.TwoInputNet(p, p, params["u"].shape[0], activation=act)
      got = float(margins.normalized_margin(net, params, ds.inputs, ds.labels))
      self.assertAlmostEqual(got / best, 1.0, delta=2e-6, msg=act)

  def test_parity_net_reference(self):
    rng = np.random.default_rng(1)
    n, k, m = 6, 3, 5
    params = {"u": rng.normal(size=(m, n)), "w": rng.normal(size=(m, 2))}
    net = models.ParityNet(n, m, degree=k)
    ds = data.sparse_parity(n, k)
    ref = ((ds.inputs @ params["u"].T) ** k) @ params["w"]
    np.testing.assert_allclose(np.asarray(net.apply(params, ds.inputs)), ref,
                               rtol=1e-4, atol=1e-4)
    self.assertEqual(net.homogeneity, k + 1)
    expect = _np_margin(ref, ds.labels).min() / _np_norm_pow(params, k + 1)
    got = float(margins.normalized_margin(net, params, ds.inputs, ds.labels))
    self.assertAlmostEqual(got, expect, delta=1e-4 * abs(expect))


class TheoreticalMaxTest(parameterized.TestCase):

  def test_closed_forms(self):
    self.assertAlmostEqual(margins.max_margin_modular_addition(7),
                           math.sqrt(2 / 27) / (math.sqrt(7) * 6))
    self.assertAlmostEqual(margins.max_margin_parity(4),
                           24 * math.sqrt(2 * 5.0 ** -5))

  @parameterized.parameters(5, 7, 13)
  def test_modular_addition_construction_is_exact(self, p):
    params = margins.modular_addition_construction(p)
    net = models.TwoInputNet(p, p, params["u"].shape[0])
    ds = data.modular_addition(p)
    logits = _np_two_input(params, ds.inputs) if p <= 7 else None
    got = float(margins.normalized_margin(net, params, ds.inputs, ds.labels))
    best = margins.max_margin_modular_addition(p)
    self.assertAlmostEqual(got / best, 1.0, delta=2e-6)
    if logits is not None:  # Dense float64 reference, exact up to rounding.
      ref = _np_margin(logits, ds.labels).min() / _np_norm_pow(params, 3)
      self.assertAlmostEqual(ref / best, 1.0, delta=1e-12)
      # All margins are equal: f is constant on wrong classes.
      self.assertLess(np.ptp(_np_margin(logits, ds.labels)), 1e-9)

  @parameterized.parameters((6, 2), (5, 3), (10, 4))
  def test_parity_construction_is_exact(self, n, k):
    params = margins.parity_construction(n, k)
    ds = data.sparse_parity(n, k)
    ref = ((ds.inputs.astype(np.float64) @ params["u"].T) ** k) @ params["w"]
    marg = _np_margin(ref, ds.labels)
    got = marg.min() / _np_norm_pow(params, k + 1)
    self.assertAlmostEqual(got / margins.max_margin_parity(k), 1.0,
                           delta=1e-12)

  def test_random_networks_stay_below_max(self):
    rng = np.random.default_rng(0)
    p = 5
    ds = data.modular_addition(p)
    best = margins.max_margin_modular_addition(p)
    base = margins.modular_addition_construction(p)
    for _ in range(20):
      noisy = {k: v + 0.05 * rng.normal(size=v.shape) for k, v in base.items()}
      logits = _np_two_input(noisy, ds.inputs)
      val = _np_margin(logits, ds.labels).min() / _np_norm_pow(noisy, 3)
      self.assertLess(val, best)

  @parameterized.parameters(("symmetric", 3), ("symmetric", 4),
                            ("dihedral", 5), ("alternating", 4), ("cyclic", 9))
  def test_group_construction_is_exact(self, family, n):
    group = data.make_group(family, n)
    irreps = group_reps.real_irreps(group)
    params = margins.group_construction(group, irreps)
    ds = data.group_composition(group)
    logits = _np_two_input(params, ds.inputs)
    # f(a, b)[c] = |G| [c = ab] - 1.
    target = -np.ones((len(ds.labels), group.order))
    target[np.arange(len(ds.labels)), ds.labels] = group.order - 1
    np.testing.assert_allclose(logits, target, atol=1e-9)
    val = _np_margin(logits, ds.labels).min() / _np_norm_pow(params, 3)
    closed = margins.group_max_margin_closed_form(group, irreps)
    lp = margins.group_max_margin_lp(group, irreps)
    self.assertAlmostEqual(val / closed, 1.0, delta=1e-10)
    # The paper's character condition holds, so the LP value equals it.
    tau = margins.group_equalizing_tau(group, irreps)
    self.assertGreaterEqual(tau.min(), -1e-12)
    self.assertAlmostEqual(lp / closed, 1.0, delta=1e-8)

  def test_cyclic_group_formula_is_modular_addition(self):
    for p in (5, 7, 11):
      g = data.cyclic_group(p)
      self.assertAlmostEqual(margins.group_max_margin_lp(g) /
                             margins.max_margin_modular_addition(p), 1.0,
                             delta=1e-9)

  def test_s3_value(self):
    # All irreps of S_3 are real: 2 / (3 sqrt(18) (1 + 2^2.5)).
    expect = 2 / (3 * math.sqrt(18) * (1 + 2 ** 2.5))
    self.assertAlmostEqual(margins.max_margin_group(data.symmetric_group(3)),
                           expect, places=12)


class GroupRepsTest(parameterized.TestCase):

  @parameterized.parameters(
      ("symmetric", 3, [1, 1, 2], [1, 1, 1]),
      ("symmetric", 4, [1, 1, 2, 3, 3], [1] * 5),
      ("symmetric", 5, [1, 1, 4, 4, 5, 5, 6], [1] * 7),
      ("cyclic", 5, [1, 2, 2], [1, 2, 2]),
      ("dihedral", 4, [1, 1, 1, 1, 2], [1] * 5),
      ("alternating", 4, [1, 2, 3], [1, 2, 1]))
  def test_dimensions_and_orthogonality(self, family, n, dims, kappas):
    group = data.make_group(family, n)
    irreps = group_reps.real_irreps(group)
    self.assertEqual([r.dim for r in irreps], dims)
    self.assertEqual([r.kappa for r in irreps], kappas)
    self.assertEqual(sum(r.dim ** 2 // r.kappa for r in irreps), group.order)
    # Real characters: <chi_rho, chi_sigma> = kappa_rho delta.
    chars = np.array([r.character for r in irreps])
    gram = chars @ chars[:, group.inverse].T / group.order
    np.testing.assert_allclose(gram, np.diag(kappas), atol=1e-9)
    # Homomorphism rho(ab) = rho(a) rho(b), checked densely.
    for r in irreps:
      prod = np.einsum("aij,bjk->abik", r.matrices, r.matrices)
      np.testing.assert_allclose(prod, r.matrices[group.table], atol=1e-9)
    # Isotypic components are orthogonal and span R^G.
    basis = np.concatenate([r.isotypic_basis for r in irreps], axis=1)
    np.testing.assert_allclose(basis.T @ basis, np.eye(group.order),
                               atol=1e-9)

  def test_number_of_classes(self):
    self.assertLen(group_reps.conjugacy_classes(data.symmetric_group(4)), 5)
    self.assertLen(group_reps.conjugacy_classes(data.symmetric_group(5)), 7)
    self.assertLen(group_reps.conjugacy_classes(data.dihedral_group(5)), 4)

  def test_irrep_shares(self):
    group = data.symmetric_group(3)
    irreps = group_reps.real_irreps(group)
    params = margins.group_construction(group, irreps)
    share, dom = group_reps.neuron_irrep_shares(params, irreps)
    np.testing.assert_allclose(share, 1.0, atol=1e-9)
    self.assertEqual(sorted(set(dom.tolist())), [1, 2])
    mixed = {k: v[:1] + v[-1:] for k, v in params.items()}  # sign + standard
    share, _ = group_reps.neuron_irrep_shares(mixed, irreps)
    self.assertLess(share[0], 0.99)


class FourierTest(absltest.TestCase):

  def test_single_frequency_neuron(self):
    p, j = 11, 3
    a = np.arange(p)
    om = 2 * np.pi * j / p
    tu, tv = 0.4, -1.3
    params = {"u": np.cos(tu + om * a)[None] * 2.0,
              "v": np.cos(tv + om * a)[None],
              "w": np.cos(tu + tv + om * a)[None] + 0.7}  # constant dropped
    spec = fourier.neuron_spectra(params)
    self.assertEqual(int(spec.frequency[0]), j)
    self.assertAlmostEqual(float(spec.max_power[0]), 1.0, places=10)
    np.testing.assert_allclose(spec.phases[0, :2], [tu, tv], atol=1e-10)
    self.assertLess(float(spec.phase_error[0]), 1e-10)

  def test_power_matches_dft_reference(self):
    rng = np.random.default_rng(0)
    for p in (7, 8):
      x = rng.normal(size=p)
      ref = np.zeros(p // 2)
      for j in range(1, p // 2 + 1):
        for jj in {j, (p - j) % p}:
          c = sum(x[a] * np.exp(-2j * np.pi * jj * a / p) for a in range(p))
          ref[j - 1] += abs(c) ** 2
      np.testing.assert_allclose(fourier.raw_power(x), ref, rtol=1e-10)
      self.assertAlmostEqual(float(fourier.fourier_power(x).sum()), 1.0)

  def test_construction_spectra(self):
    p = 7
    params = margins.modular_addition_construction(p)
    spec = fourier.neuron_spectra(params)
    np.testing.assert_allclose(spec.max_power, 1.0, atol=1e-10)
    np.testing.assert_array_equal(fourier.frequency_counts(spec.frequency, p),
                                  [9, 9, 9])
    np.testing.assert_array_less(spec.phase_error, 1e-9)

  def test_parity_support(self):
    u = np.array([[1.0, -1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(fourier.parity_support_fraction(u, [0, 1]),
                               [1.0, 0.5])
    np.testing.assert_allclose(fourier.parity_balance(u, [0, 1]), [1.0, 1.0])


if __name__ == "__main__":
  absltest.main()
