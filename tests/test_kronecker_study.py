"""Kronecker-structure study (experiments/kronecker): implicit metrics vs dense
numpy, taps vs jax.grad, the sampled-label Fisher of batch gradients, the
stored training gradients vs an independent replay, and the runner end to end."""

import contextlib
import io
import json
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
from matplotlib import image as mpl_image
import numpy as np
import optax

from data_pipelines import batching
from experiments.kronecker import kronecker_config as study_config
from experiments.kronecker import kronecker_analysis as ka
from experiments.kronecker import kronecker_data
from experiments.kronecker import kronecker_fits as kf
from experiments.kronecker import kronecker_runner
from experiments.kronecker import layer_taps as taps
from framework import config as config_lib
from framework import mesh as mesh_lib
from framework import optim
from framework import train_state
from models import registry
from models import transformer
from models.cnn import SmallCNN
from models.mlp import MLP


def _rearrange(h, m, n):
  """Van Loan R(H) in numpy: R[(a,c),(b,d)] = H[(a,b),(c,d)]."""
  return h.reshape(m, n, m, n).transpose(0, 2, 1, 3).reshape(m * m, n * n)


def _dense_h(g):
  g = np.asarray(g, np.float64).reshape(len(g), -1)
  return g.T @ g / len(g)


def _cos(x, y):
  x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
  return x @ y / (np.linalg.norm(x) * np.linalg.norm(y))


def _random_psd(rng, d):
  x = rng.normal(size=(d, d))
  return x @ x.T / d + 0.1 * np.eye(d)


class ImplicitMathTest(parameterized.TestCase):

  def test_power_iteration_recovers_exact_kronecker(self):
    rng = np.random.default_rng(0)
    m, n = 4, 3
    a, b = _random_psd(rng, m), _random_psd(rng, n)
    # Samples with E[vec G vec G^T] = A (x) B exactly: sqrt(lam mu S) u v^T.
    la, ua = np.linalg.eigh(a)
    lb, ub = np.linalg.eigh(b)
    s = m * n
    g = np.stack([np.sqrt(la[i] * lb[j] * s) * np.outer(ua[:, i], ub[:, j])
                  for i in range(m) for j in range(n)])
    np.testing.assert_allclose(_dense_h(g), np.kron(a, b), atol=1e-10)
    ga, gb = ka.analyze(g).factors["optimal"]
    self.assertGreater(_cos(np.kron(ga, gb), np.kron(a, b)), 1 - 1e-6)
    fit = kf.kronecker_fit_from_samples(jnp.asarray(g, jnp.float32), ga, gb)
    self.assertAlmostEqual(float(fit.cosine), 1.0, places=5)
    self.assertLess(float(fit.rel_error), 2e-3)

  def test_power_iteration_reaches_optimal_kronecker(self):
    # (Moved from tests/test_shampoo.py with the dense helpers it checks.)
    rng = np.random.default_rng(5)
    a0, b0 = rng.normal(size=(3, 3)), rng.normal(size=(4, 4))
    gs = np.einsum("ij,sjk,lk->sil", a0, rng.normal(size=(400, 3, 4)), b0)
    gs = jnp.asarray(gs + 0.3 * rng.normal(size=gs.shape), jnp.float32)
    h = np.asarray(kf.gradient_covariance(gs), np.float64)
    r = h.reshape(3, 4, 3, 4).transpose(0, 2, 1, 3).reshape(9, 16)
    s = np.linalg.svd(r, compute_uv=False)
    best_err = np.sqrt(np.sum(s[1:] ** 2) / np.sum(s ** 2))

    @jax.jit
    def fits(gs, h):
      a, b = kf.power_iteration_factors(gs, num_iters=20)
      l, rr = kf.shampoo_factors(gs)
      a2, b2 = kf.optimal_kronecker_approximation(h, 3, 4, num_iters=20)
      return [kf.kronecker_fit(h, *f)[1] for f in ((a, b), (l, rr), (a2, b2))]

    err_power, err_shampoo, err_dense = fits(gs, jnp.asarray(h, jnp.float32))
    np.testing.assert_allclose(err_power, best_err, rtol=1e-3)
    np.testing.assert_allclose(err_dense, best_err, rtol=1e-3)
    self.assertGreater(float(err_shampoo), float(err_power) * 1.01)

  def test_power_iteration_matches_numpy_svd_of_rearrangement(self):
    rng = np.random.default_rng(1)
    m, n, s = 5, 4, 9
    g = rng.normal(size=(s, m, n)) * rng.uniform(0.2, 2.0, size=(s, 1, 1))
    h = _dense_h(g)  # a random PSD matrix of rank s, as samples
    u, sv, vt = np.linalg.svd(_rearrange(h, m, n))
    an = ka.analyze(g, tol=1e-12, max_iters=400)
    a, b = an.factors["optimal"]
    self.assertAlmostEqual(abs(_cos(a, u[:, 0])), 1.0, places=5)
    self.assertAlmostEqual(abs(_cos(b, vt[0])), 1.0, places=5)
    np.testing.assert_allclose(ka.van_loan_singular_values(jnp.asarray(g, jnp.float32), 2),
                               sv[:2], rtol=1e-4)
    # The best cosine is sigma_1 / |H|, attained by the power iteration.
    cos = ka.fit_all(an, {"opt": (a, b)})["opt"]["cos"]
    self.assertAlmostEqual(cos, sv[0] / np.linalg.norm(h), places=5)
    self.assertGreater(an.optimal_iters, 1)
    # The same optimum from the dense Van Loan power iteration (kronecker_fits).
    da, db = kf.optimal_kronecker_approximation(jnp.asarray(h, jnp.float32), m, n, 200)
    self.assertAlmostEqual(abs(_cos(np.kron(da, db), np.kron(a, b))), 1.0, places=5)

  def test_implicit_formulas_match_dense(self):
    rng = np.random.default_rng(2)
    s, m, n = 6, 3, 4
    g = rng.normal(size=(s, m, n))
    a, b = rng.normal(size=(m, m)), rng.normal(size=(n, n))
    h = _dense_h(g)
    gj = jnp.asarray(g, jnp.float32)
    samples = kf.gradient_samples(gj)
    np.testing.assert_allclose(kf.kronecker_inner_from_samples(samples, a, b),
                               np.sum(h * np.kron(a, b)), rtol=1e-5)
    np.testing.assert_allclose(kf.covariance_sq_norm_from_samples(gj), np.sum(h * h), rtol=1e-5)
    # Unbiased |H|^2: mean over i != j of <G_i, G_j>^2.
    k = g.reshape(s, -1) @ g.reshape(s, -1).T
    off = (np.sum(k ** 2) - np.sum(np.diag(k) ** 2)) / (s * (s - 1))
    np.testing.assert_allclose(kf.covariance_sq_norm_from_samples(gj, unbiased=True), off,
                               rtol=1e-5)
    fit = kf.kronecker_fit_from_samples(samples, a, b)
    kk = np.kron(a, b)
    scale = np.sum(h * kk) / np.sum(kk * kk)
    np.testing.assert_allclose(fit.scale, scale, rtol=1e-5)
    np.testing.assert_allclose(fit.cosine, _cos(h, kk), rtol=1e-5)
    np.testing.assert_allclose(fit.rel_error, np.linalg.norm(h - scale * kk) / np.linalg.norm(h),
                               rtol=1e-4)
    # The Van Loan operator and its adjoint.
    r = _rearrange(h, m, n)
    np.testing.assert_allclose(kf.contract_left(samples, b).ravel(), r @ b.ravel(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(kf.contract_right(samples, a).ravel(), r.T @ a.ravel(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kf.van_loan_rearrange(h, m, n), r)
    # Groups of 2 consecutive samples (one input each): pairs within a group dropped.
    same = sum(k[i, j] ** 2 for i in range(s) for j in range(s) if i // 2 == j // 2)
    an2 = ka.analyze(gj, group=2)
    self.assertAlmostEqual(an2.stats["u"], (np.sum(k ** 2) - same) / (s * (s - 2)),
                           delta=1e-5 * off)
    self.assertAlmostEqual(an2.stats["diag_frac"], same / np.sum(k ** 2), places=5)
    # dense_check of the runner agrees with numpy (tiny discrepancy only).
    an = ka.analyze(gj)
    self.assertLess(ka.dense_check(gj, an), 1e-4)
    self.assertEqual(set(an.factors), {"optimal", "shampoo2", "shampoo", "pi2", "pi5"})
    self.assertAlmostEqual(an.stats["v"], np.sum(h * h), delta=1e-5 * np.sum(h * h))
    self.assertAlmostEqual(an.stats["u"], off, delta=1e-5 * off)

  def test_one_step_from_identity_gives_shampoo_factors(self):
    rng = np.random.default_rng(3)
    g = rng.normal(size=(7, 5, 3))
    l = np.einsum("sij,skj->ik", g, g) / 7
    r = np.einsum("sji,sjk->ik", g, g) / 7
    a1, b1 = kf.simultaneous_power_iteration(jnp.asarray(g, jnp.float32), 1)
    np.testing.assert_allclose(a1, l, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b1, r, rtol=1e-5, atol=1e-5)
    f = ka.analyze(g, pi_steps=(2,)).factors
    np.testing.assert_allclose(f["shampoo2"][0], l, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f["shampoo2"][1], r, rtol=1e-5, atol=1e-5)
    # Step 2: A_2 = E[G R~ G^T] with R~ = R / (tr R / n), B_2 = E[G^T L~ G].
    rt, lt = r / (np.trace(r) / 3), l / (np.trace(l) / 5)
    np.testing.assert_allclose(f["pi2"][0], np.einsum("sij,jk,slk->il", g, rt, g) / 7,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f["pi2"][1], np.einsum("sji,jk,skl->il", g, lt, g) / 7,
                               rtol=1e-5, atol=1e-5)
    # The GEMM-layout power iteration is the optimizer's power iteration.
    pa, pb = kf.power_iteration_samples(jnp.asarray(g, jnp.float32), 3, jnp.eye(3))
    qa, qb = kf.power_iteration_factors(jnp.asarray(g, jnp.float32), 3)
    np.testing.assert_allclose(pa, qa, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pb, qb, rtol=1e-5, atol=1e-5)
    # Shampoo's implied H is L^{1/2} (x) R^{1/2}.
    sq = ka.psd_sqrt(l)
    np.testing.assert_allclose(sq @ sq, l, atol=1e-10)


class FisherOfBatchGradientTest(absltest.TestCase):
  """E[G_B G_B^T] for a batch gradient G_B = (1/B) sum_i G_i.

  The B inputs are drawn i.i.d. from a pool and, for sampled labels,
  y_i ~ p(. | x_i) independently. For i != j, E[G_i G_j^T] = E[G_i] E[G_j]^T
  and E[G_i] = E_x sum_y p(y|x) grad(-log p(y|x)) = -E_x grad sum_y p(y|x) = 0,
  so only the B diagonal terms remain:

      E[G_B G_B^T] = L / B,   E[G_B^T G_B] = R / B   (sampled labels),

  with L = E_x sum_y p(y|x) G_xy G_xy^T (the true-Fisher factor). With the
  real labels E[G_i] = g_bar != 0 and instead

      E[G_B G_B^T] = L_emp / B + (1 - 1/B) g_bar g_bar^T.

  Checked by Monte Carlo over batch gradients from `taps.batch_grads` on a
  softmax-linear model (G_xy = x (p - e_y)^T analytically), elementwise
  within 4.5 standard errors (fixed seed).
  """

  def test_sampled_labels_give_l_over_b(self):
    rng = np.random.default_rng(0)
    n_pool, d, c, bsz, nb = 10, 4, 3, 4, 4000
    pool_x = rng.normal(size=(n_pool, d)).astype(np.float32)
    pool_y = rng.integers(0, c, n_pool).astype(np.int32)
    module = MLP(hidden_sizes=(), num_outputs=c)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), pool_x[:1])["params"])
    params = jax.tree.map(lambda p: p * 3.0, params)  # confident model: E[G] matters
    layers, _ = taps.discover_layers(module, params, jnp.asarray(pool_x[:1]))
    (layer,) = layers
    p = np.asarray(jax.nn.softmax(module.apply({"params": params}, pool_x)), np.float64)
    eye = np.eye(c)
    g_xy = np.einsum("xi,xyj->xyij", pool_x, p[:, None, :] - eye[None])  # (x, y, d, c)
    l_true = np.einsum("xy,xyij,xykj->ik", p, g_xy, g_xy) / n_pool
    r_true = np.einsum("xy,xyji,xyjk->ik", p, g_xy, g_xy) / n_pool
    g_real = g_xy[np.arange(n_pool), pool_y]
    l_emp = np.einsum("xij,xkj->ik", g_real, g_real) / n_pool
    gbar = g_real.mean(0)

    idx = rng.integers(0, n_pool, size=(nb, bsz))
    xs, ys = jnp.asarray(pool_x[idx]), jnp.asarray(pool_y[idx])
    keys = jax.random.split(jax.random.PRNGKey(1), (nb, bsz))

    def zscores(sampled, expected_l, expected_r):
      gb = np.asarray(taps.batch_grads(module, layers, params, xs, ys, keys, sampled)[layer.name],
                      np.float64)
      zs = []
      for stat, want in ((np.einsum("bij,bkj->bik", gb, gb), expected_l),
                         (np.einsum("bji,bjk->bik", gb, gb), expected_r)):
        se = stat.std(0) / np.sqrt(nb)
        zs.append(np.abs(stat.mean(0) - want) / np.maximum(se, 1e-12))
      return max(z.max() for z in zs)

    self.assertLess(zscores(True, l_true / bsz, r_true / bsz), 4.5)
    r_emp = np.einsum("xji,xjk->ik", g_real, g_real) / n_pool
    self.assertLess(zscores(False, l_emp / bsz + (1 - 1 / bsz) * gbar @ gbar.T,
                            r_emp / bsz + (1 - 1 / bsz) * gbar.T @ gbar), 4.5)
    # Power: the real-label statistics are far from L_emp / B.
    self.assertGreater(zscores(False, l_emp / bsz, r_emp / bsz), 10.0)


def _tiny_models():
  rng = np.random.default_rng(0)
  cfg = transformer.TransformerConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=4,
                                      num_kv_heads=2, head_dim=4, d_ff=24)
  return {
      "mlp": (MLP(hidden_sizes=(8,), num_outputs=5), rng.normal(size=(3, 6)),
              rng.integers(0, 5, 3)),
      "cnn": (SmallCNN(channels=(3, 4), hidden_sizes=(), num_outputs=5),
              rng.normal(size=(3, 8, 8, 1)), rng.integers(0, 5, 3)),
      "lm": (transformer.TransformerLM(cfg), rng.integers(0, 32, (3, 8)),
             rng.integers(0, 32, (3, 8))),
  }


class TapsTest(parameterized.TestCase):

  @parameterized.parameters("mlp", "cnn", "lm")
  def test_taps_reproduce_model_and_gradients(self, name):
    module, xs, ys = _tiny_models()[name]
    xs = jnp.asarray(xs, jnp.int32 if name == "lm" else jnp.float32)
    ys = jnp.asarray(ys, jnp.int32)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), xs[:1])["params"])
    layers, shapes = taps.discover_layers(module, params, xs[:1])
    expected = {"mlp": 2, "cnn": 3, "lm": 7}[name]
    self.assertLen(layers, expected)
    probes0 = taps.zero_probes(shapes)
    keys = jax.random.split(jax.random.PRNGKey(1), len(xs))
    # per_example_grads is model-agnostic (example_taps + sums): checked on the
    # small models only, to keep the transformer case to one compile.
    gs, fac = (None, None) if name == "lm" else taps.per_example_grads(
        module, layers, params, probes0, xs, ys, keys, sampled=False)

    def loss(p, x, y):
      lg = module.apply({"params": p}, x[None])
      return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(lg, y[None]))

    @jax.jit
    def references(params, xs, ys, keys):
      tapped = taps.tapped_apply(module, params, xs)[0]
      plain = module.apply({"params": params}, xs)
      refs = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, xs, ys)
      per_ex = jax.vmap(lambda x, y, k: taps.example_taps(module, layers, params, probes0, x, y, k,
                                                      sampled=False))(xs, ys, keys)
      return tapped, plain, refs, per_ex

    tapped, plain, refs, per_ex = references(params, xs, ys, keys)
    np.testing.assert_allclose(tapped, plain, atol=1e-6)
    g, rows, dg = jax.tree.map(np.asarray, per_ex)
    for l in layers:
      want = np.asarray(taps.get_path(refs, l.path)).reshape(len(xs), l.m, l.n)
      np.testing.assert_allclose(g[l.name], want, atol=1e-5)
      # G = sum_p a_p d_p^T: the K-FAC factors belong to this gradient.
      np.testing.assert_allclose(np.einsum("spi,spj->sij", rows[l.name], dg[l.name]), want,
                                 atol=1e-5)
      if gs is None:
        continue
      np.testing.assert_allclose(gs[l.name], want, atol=1e-5)
      np.testing.assert_allclose(fac[l.name][0],
                                 np.einsum("spi,spj->ij", rows[l.name], rows[l.name]),
                                 rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(fac[l.name][1], np.einsum("spi,spj->ij", dg[l.name], dg[l.name]),
                                 rtol=1e-4, atol=1e-5)


class StudyDataTest(absltest.TestCase):

  def test_lm_windows_are_next_byte_pairs(self):
    stream = np.arange(50, dtype=np.uint8)
    ex = kronecker_data._lm_example(stream, np.array([0, 7, 20]), 5)
    np.testing.assert_array_equal(ex["inputs"][1], [7, 8, 9, 10, 11])
    np.testing.assert_array_equal(ex["targets"], ex["inputs"] + 1)
    self.assertEqual(ex["weights"].shape, (3, 5))

  def test_sample_draws_pairs_from_the_training_set(self):
    data = kronecker_data.build_data(study_config.get_config("tiny").data, 0)
    x, y = data.sample(np.random.default_rng(0), 64)
    self.assertEqual(x.shape, (64, 64))
    # Every drawn (x, y) is a training pair: match rows back to their labels.
    rows = {tuple(r): int(l) for r, l in zip(data.train["x"], data.train["y"])}
    self.assertTrue(all(rows[tuple(r)] == int(l) for r, l in zip(x, y)))
    self.assertEqual(sum(len(b["y"]) for b in data.held_out_batches(100)),
                     len(data.held_out["y"]))


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(*study_config.VARIANTS)
  def test_variants_validate(self, variant):
    c = study_config.get_config(variant)
    kronecker_runner.validate(c)  # check_keys against the schema, model fields, study options
    self.assertIn(c.model.name, registry.names())
    self.assertIn(0, c.study.measure_steps)

  def test_rejects_what_the_study_cannot_measure(self):
    for field, value in (("checkpoint.enabled", True), ("trainer.steps_per_call", 4),
                         ("study.gn_labels", "argmax"), ("data.name", "mnist")):
      c = study_config.get_config("tiny")
      section, key = field.split(".")
      c[section][key] = value
      with self.assertRaisesRegex(config_lib.ConfigError, field.replace(".", r"\.")):
        kronecker_runner.validate(c)
    with self.assertRaisesRegex(ValueError, "variant"):
      study_config.get_config("resnet")


class RunnerTest(absltest.TestCase):

  def test_run_end_to_end(self):
    c = study_config.get_config("tiny")   # one 64x10 softmax layer, 8 steps
    c.study.gn_inputs = "fisher_trace"
    workdir = self.create_tempdir().full_path
    # After each measured step the results file holds the steps measured so
    # far (partial), and a progress line with an ETA is printed.
    original, seen = kronecker_runner.write_metrics_json, []

    def spy(*args, **kwargs):
      original(*args, **kwargs)
      with open(os.path.join(workdir, "kronecker_metrics.json")) as f:
        saved = json.load(f)
      seen.append((saved["partial"], sorted(int(t) for t in saved["results"])))

    err = io.StringIO()
    with mock.patch.object(kronecker_runner, "write_metrics_json", spy), \
        contextlib.redirect_stderr(err):
      hook, summary = kronecker_runner.run_study(c, workdir)
    self.assertEqual(seen, [(True, [0]), (True, [0, 8]), (False, [0, 8])])
    lines = [l for l in err.getvalue().splitlines() if l.startswith("[kronecker]")]
    self.assertLen(lines, 2)
    self.assertIn("1/2 (50.0%)", lines[0])
    self.assertIn("eta", lines[0])
    self.assertIn("step 8/8", lines[1])
    # Plots at readable resolution: 120 dpi on 12 x 4.4 in (figure 1, one
    # layer) and 4.8 x 4.2 in (shortcuts).
    for name, (w, h) in (("figure1.png", (1440, 528)), ("shortcuts.png", (576, 504))):
      self.assertEqual(mpl_image.imread(os.path.join(workdir, name)).shape[:2], (h, w), name)
    for f in ("metrics.jsonl", "kronecker_metrics.json", "figure1.png", "shortcuts.png",
              "report.md", "summary.json"):
      self.assertTrue(os.path.exists(os.path.join(workdir, f)), f)
    self.assertEqual(summary["layers"], ["dense_0/kernel"])
    self.assertLess(summary["dense_check_max_abs_diff"], 1e-4)
    with open(os.path.join(workdir, "kronecker_metrics.json")) as f:
      res = json.load(f)["results"]
    self.assertEqual(set(res), {"0", "8"})
    self.assertEqual(res["0"]["adagrad"], {})  # no training gradients yet
    for step in res.values():
      for view in ("gn", "adagrad"):
        for met in step[view].values():
          # The optimum is optimal, attains sigma_1/|H|, and 0 <= cos <= 1.
          for name in ("shampoo2", "shampoo", "pi2"):
            self.assertLessEqual(met[f"{name}/cos"], met["optimal/cos"] + 1e-5)
          self.assertBetween(met["shampoo/cos"], 0.0, 1.0)
    sc = res["8"]["shortcut"]["dense_0/kernel"]
    self.assertEqual(set(sc), {"sampled", "real"})
    self.assertEqual(set(sc["real"]), {"4"})
    report = open(os.path.join(workdir, "report.md")).read()
    self.assertIn("Shampoo²", report)
    self.assertIn("dense_0/kernel (64×10)", report)
    # The trainer's train/* and the hook's study metrics share metrics.jsonl.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    self.assertTrue(any("train/loss" in r for r in records))
    self.assertEqual([r["step"] for r in records if "gn/dense_0/kernel/optimal/cos" in r], [0, 8])
    # Plots and report can be rebuilt from the JSON files alone.
    os.remove(os.path.join(workdir, "report.md"))
    rebuilt = kronecker_runner.rebuild_outputs(workdir)
    self.assertEqual(open(os.path.join(workdir, "report.md")).read(), report)
    self.assertEqual(rebuilt["gn/mean_cos/optimal"], summary["gn/mean_cos/optimal"])

    # The Adagrad view's gradients are the training gradients g_0..g_7: replay
    # the run independently (same initial parameters, same batch stream, the
    # cross-entropy mean and optax.adam by hand) and compare.
    (layer,) = hook.layers
    self.assertEqual(hook.ada_count, 8)
    model = registry.build(c.model)
    data = kronecker_data.build_data(c.data, c.seed)
    batches = batching.BatchIterator(data.train, c.data.batch_size, seed=c.seed)
    example = {k: v[:1] for k, v in data.train.items()}
    tx = optim.make_optimizer(c.optimizer, optim.make_schedule(c.schedule, 8))
    mesh = mesh_lib.create_mesh(dict(c.mesh.shape), jax.devices()[:1])
    state, _ = train_state.create_sharded_state(model, tx, example, mesh, c.sharding.rules,
                                                seed=c.seed)
    params = jax.device_get(state.params)
    ref_tx = optax.adam(c.schedule.peak_lr)
    opt_state = ref_tx.init(params)

    def mean_xent(p, b):
      logits = model.module.apply({"params": p}, b["x"])
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]))

    for t in range(8):
      g = jax.grad(mean_xent)(params, next(batches))
      np.testing.assert_allclose(hook.ada[layer.name][t], taps.get_path(g, layer.path),
                                 rtol=1e-4, atol=1e-6, err_msg=f"step {t}")
      updates, opt_state = ref_tx.update(g, opt_state, params)
      params = optax.apply_updates(params, updates)


if __name__ == "__main__":
  absltest.main()
