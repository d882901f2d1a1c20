"""Calibration metrics and recalibration against closed forms and brute force."""
import itertools
import json
import os

import numpy as np
from absl.testing import absltest, parameterized

from experiments.configs import icl_calibration
from experiments.eval import calibration as cal
from experiments.eval import calibration_study as study
from experiments.eval import icl_synthetic as syn


def _calibrated_sample(n, rng):
  """Top-label confidences c ~ U(0.5, 1) and correctness a ~ Bernoulli(c)."""
  conf = rng.uniform(0.5, 1.0, size=n)
  return conf, (rng.random(n) < conf).astype(float)


class BinningTest(absltest.TestCase):

  def test_equal_width_edges(self):
    conf = np.array([0.0, 0.05, 0.1, 0.0999, 0.95, 1.0])
    np.testing.assert_array_equal(cal.equal_width_bins(conf, 10), [0, 0, 1, 0, 9, 9])

  def test_equal_mass_bins_hold_equal_counts(self):
    conf = np.random.default_rng(0).random(1000)
    bins = cal.equal_mass_bins(conf, 10)
    np.testing.assert_array_equal(np.bincount(bins), [100] * 10)
    # monotone: a higher confidence never lands in a lower bin
    order = np.argsort(conf)
    self.assertTrue(np.all(np.diff(bins[order]) >= 0))


class ErrorsTest(parameterized.TestCase):

  def test_hand_computed_ece_mce(self):
    # bins of width 0.5: {0.2, 0.4} with correctness {1, 0}: s=0.3, o=0.5, gap 0.2;
    # {0.6, 0.8, 0.9, 0.9} all correct: s=0.8, o=1.0, gap 0.2 -> but weights 2/6, 4/6.
    conf = np.array([0.2, 0.4, 0.6, 0.8, 0.9, 0.9])
    correct = np.array([1, 0, 1, 1, 1, 1.0])
    self.assertAlmostEqual(cal.ece(conf, correct, 2), 2 / 6 * 0.2 + 4 / 6 * 0.2)
    self.assertAlmostEqual(cal.mce(conf, correct, 2), 0.2)
    # l2 debiased by hand: bin 1: 0.2^2 - 0.5*0.5/1; bin 2: 0.2^2 - 0
    stats = cal.bin_stats(conf, correct, cal.equal_width_bins(conf, 2))
    self.assertAlmostEqual(cal.debiased_squared_ce(stats),
                           2 / 6 * (0.04 - 0.25) + 4 / 6 * 0.04)

  def test_brier_nll_hand(self):
    probs = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    gold = np.array([0, 1])
    self.assertAlmostEqual(cal.brier(probs, gold),
                           ((0.09 + 0.04 + 0.01) + (0.0625 + 0.5625 + 0.25)) / 2)
    self.assertAlmostEqual(cal.nll(probs, gold), -(np.log(0.7) + np.log(0.25)) / 2)

  def test_known_constant_overconfidence(self):
    # accuracy = c - 0.1 everywhere: every binning gives ECE -> 0.1, MCE ~ 0.1.
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.6, 1.0, size=200_000)
    correct = (rng.random(conf.size) < conf - 0.1).astype(float)
    for scheme in ("width", "mass"):
      self.assertAlmostEqual(cal.ece(conf, correct, 15, scheme), 0.1, delta=0.005)
      self.assertAlmostEqual(cal.debiased_ece(conf, correct, 15, scheme), 0.1, delta=0.005)
      self.assertAlmostEqual(cal.debiased_l2_ce(conf, correct, 15, scheme), 0.1, delta=0.005)

  def test_known_nonconstant_miscalibration_equal_width(self):
    # c ~ U(0, 1), P(a=1 | c) = c^2. In bin [l, u): s_b = (l+u)/2, o_b = (u^3-l^3)/(3(u-l)),
    # so the binned ECE is sum_b (u - l) |o_b - s_b| exactly.
    rng = np.random.default_rng(2)
    conf = rng.random(400_000)
    correct = (rng.random(conf.size) < conf ** 2).astype(float)
    edges = np.linspace(0, 1, 11)
    l, u = edges[:-1], edges[1:]
    analytic = np.sum((u - l) * np.abs((u ** 3 - l ** 3) / (3 * (u - l)) - (l + u) / 2))
    self.assertAlmostEqual(cal.ece(conf, correct, 10, "width"), analytic, delta=0.004)
    self.assertAlmostEqual(analytic, 1 / 6, delta=0.003)   # ~ integral |c^2 - c| dc
    # MCE: the largest per-bin gap is in the middle, 0.25 - 1/1200 at [0.4, 0.5) / [0.5, 0.6)
    gaps = np.abs((u ** 3 - l ** 3) / (3 * (u - l)) - (l + u) / 2)
    self.assertAlmostEqual(cal.mce(conf, correct, 10, "width"), gaps.max(), delta=0.01)

  def test_calibrated_predictor_debiased_is_closer_to_zero(self):
    plug, deb_l1, deb_l2 = [], [], []
    for seed in range(20):
      conf, correct = _calibrated_sample(1000, np.random.default_rng(seed))
      plug.append(cal.ece(conf, correct, 15, "mass"))
      deb_l1.append(cal.debiased_ece(conf, correct, 15, "mass", seed=seed))
      stats = cal.bin_stats(conf, correct, cal.equal_mass_bins(conf, 15))
      deb_l2.append(cal.debiased_squared_ce(stats))
    # the plug-in estimate of a zero error is ~ sqrt(2/pi) mean_b sd_b ~ 0.04 > 0
    self.assertGreater(np.mean(plug), 0.025)
    # the l1 bias correction (estimated at the inflated plug-in point) removes a
    # good part of the bias, not all of it
    self.assertLess(abs(np.mean(deb_l1)), 0.75 * np.mean(plug))
    self.assertLess(np.mean(np.abs(deb_l1)), np.mean(plug))
    # the squared l2 estimator is unbiased: its mean over seeds is ~ 0 within its error
    self.assertLess(abs(np.mean(deb_l2)), 3 * np.std(deb_l2) / np.sqrt(len(deb_l2)) + 1e-5)
    # and the plug-in ECE of a calibrated predictor vanishes as n grows
    conf, correct = _calibrated_sample(400_000, np.random.default_rng(99))
    self.assertLess(cal.ece(conf, correct, 15, "width"), 0.005)

  def test_summary_keys_and_top_label(self):
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    conf, pred, correct = cal.top_label(probs, np.array([0, 0, 1]))
    np.testing.assert_allclose(conf, [0.6, 0.7, 0.5])
    np.testing.assert_array_equal(pred, [0, 1, 0])       # ties -> lowest id
    np.testing.assert_array_equal(correct, [1, 0, 0])
    s = cal.summary(probs, np.array([0, 0, 1]))
    self.assertAlmostEqual(s["accuracy"], 1 / 3)
    self.assertIn("debiased_ece_15", s)

  def test_bad_input_names_the_problem(self):
    with self.assertRaisesRegex(ValueError, "same length"):
      cal.ece(np.ones(3), np.ones(4))
    with self.assertRaisesRegex(ValueError, "scheme"):
      cal.ece(np.ones(3), np.ones(3), 10, "quantile")


class RecalibrationTest(parameterized.TestCase):

  @parameterized.parameters(0.5, 2.0, 3.0)
  def test_temperature_recovers_planted_temperature(self, planted):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(10_000, 4)) * 3.0
    p = cal.label_probs(z / planted)
    gold = (p.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)
    t = cal.fit_temperature(z, gold)
    self.assertAlmostEqual(t, planted, delta=0.08 * planted)
    # and it is the minimiser: a fine grid search finds no lower NLL
    grid = np.exp(np.linspace(np.log(planted / 1.3), np.log(planted * 1.3), 161))
    nlls = [cal.tempered_nll(z, gold, g) for g in grid]
    self.assertLessEqual(cal.tempered_nll(z, gold, t), min(nlls) + 1e-9)
    self.assertAlmostEqual(t, grid[int(np.argmin(nlls))], delta=grid[1] - grid[0] + 1e-3 * t)

  def test_temperature_bounds(self):
    z = np.array([[2.0, 0.0], [0.0, 3.0]])
    self.assertEqual(cal.fit_temperature(z, np.array([0, 1]), t_min=0.05), 0.05)  # separable
    self.assertEqual(cal.fit_temperature(z, np.array([1, 0]), t_max=50.0), 50.0)  # anti-correlated

  def test_platt_recovers_planted_parameters(self):
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.5, 0.99, size=50_000)
    truth = cal.Platt(0.6, -0.3)
    correct = (rng.random(conf.size) < truth(conf)).astype(float)
    fit = cal.fit_platt(conf, correct)
    self.assertAlmostEqual(fit.a, 0.6, delta=0.05)
    self.assertAlmostEqual(fit.b, -0.3, delta=0.05)
    # the fitted loss is the minimum of a grid around it
    best = min(cal.platt_loss(conf, correct, a, b) for a in np.linspace(fit.a - .1, fit.a + .1, 21)
               for b in np.linspace(fit.b - .1, fit.b + .1, 21))
    self.assertLessEqual(cal.platt_loss(conf, correct, fit.a, fit.b), best + 1e-10)

  def test_scaling_binning_uses_disjoint_splits(self):
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.5, 1.0, size=3000)
    correct = (rng.random(conf.size) < 0.5 + 0.5 * (conf - 0.5)).astype(float)   # overconfident
    idx = rng.permutation(conf.size)
    fit_idx, bin_idx, test_idx = idx[:1000], idx[1000:2000], idx[2000:]
    sb = cal.fit_scaling_binning(conf, correct, fit_idx, bin_idx, num_bins=10)
    # at most 10 output values; each bin's value is the mean of g over the bin split's bin
    out = sb(conf[test_idx])
    self.assertLessEqual(len(np.unique(out)), 10)
    g = sb.scaler(conf[bin_idx])
    b = cal.assign_bins(g, sb.edges)
    for k in range(10):
      self.assertAlmostEqual(sb.means[k], g[b == k].mean())
    # the binning split's labels are never read; the scaling split's are
    flipped = correct.copy()
    flipped[bin_idx] = 1 - flipped[bin_idx]
    again = cal.fit_scaling_binning(conf, flipped, fit_idx, bin_idx, num_bins=10)
    np.testing.assert_array_equal(again.means, sb.means)
    flipped2 = correct.copy()
    flipped2[fit_idx] = 1 - flipped2[fit_idx]
    other = cal.fit_scaling_binning(conf, flipped2, fit_idx, bin_idx, num_bins=10)
    self.assertFalse(np.allclose(other.means, sb.means))
    with self.assertRaisesRegex(ValueError, "disjoint"):
      cal.fit_scaling_binning(conf, correct, idx[:1000], idx[999:2000])
    # it removes most of the planted miscalibration on the test split
    before = cal.ece(conf[test_idx], correct[test_idx], 10, "mass")
    after = cal.ece(out, correct[test_idx], 10, "mass")
    self.assertGreater(before, 0.1)
    self.assertLess(after, 0.05)

  def test_with_top_confidence_keeps_ranking_and_sums_to_one(self):
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.8, 0.0]])
    out = cal.with_top_confidence(probs, np.array([0.5, 0.9]))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out[0], [0.5, 0.375, 0.125])
    np.testing.assert_allclose(out[1], [0.1, 0.9, 0.0])

  def test_bootstrap_interval_covers_mean(self):
    x = np.random.default_rng(6).normal(1.0, 1.0, size=400)
    lo, hi = cal.bootstrap_interval(lambda i: x[i].mean(), len(x), resamples=300)
    self.assertLess(lo, x.mean())
    self.assertGreater(hi, x.mean())
    self.assertAlmostEqual(hi - lo, 2 * 1.96 / 20, delta=0.04)
    groups = [np.arange(0, 200), np.arange(200, 400)]
    lo2, hi2 = cal.bootstrap_interval(lambda i: x[i].mean(), len(x), groups=groups, resamples=300)
    self.assertLess(lo2, hi2)

  def test_reliability_diagram_png(self):
    conf, correct = _calibrated_sample(500, np.random.default_rng(7))
    path = os.path.join(self.create_tempdir().full_path, "rel.png")
    cal.reliability_diagram(conf, correct, path, title="t")
    with open(path, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


class SyntheticRulesTest(parameterized.TestCase):

  @parameterized.parameters((2, "01", 0.1), (1, "xyz", 0.2), (2, "01", 0.0))
  def test_bayes_predictive_equals_enumeration(self, features, labels, noise):
    fam = syn.RuleFamily(alphabet="abc", num_features=features, labels=labels, noise=noise)
    a, m = len(fam.alphabet), len(labels)
    ep = syn.sample_episode(fam, 6, np.random.default_rng(0))
    lik = lambda y, l: 1 - noise if y == l else noise / (m - 1)
    for k in (0, 1, 3, 5):
      x, y, q = ep.x[:k], ep.y[:k], ep.x[k]
      num = np.zeros(m)
      # brute force over every rule (p, f): prior uniform, likelihood of the shots
      for p in range(features):
        for f in itertools.product(range(m), repeat=a):
          w = np.prod([lik(y[i], f[x[i, p]]) for i in range(k)])
          num += w * np.array([lik(v, f[q[p]]) for v in range(m)])
      np.testing.assert_allclose(syn.bayes_predictive(fam, x, y, q), num / num.sum(), atol=1e-12)

  def test_bayes_predictor_is_calibrated_and_learns_in_context(self):
    fam = syn.RuleFamily()
    ev = syn.eval_set(fam, 1500, 16, seed=1)
    probs0 = ev.bayes_probs(fam, 0)
    np.testing.assert_allclose(probs0, 0.5)            # no shots: uniform over 2 labels
    _, gold = ev.prompts(fam, 16)
    probs = ev.bayes_probs(fam, 16)
    conf, _, correct = cal.top_label(probs, gold)
    self.assertGreater(correct.mean(), 0.75)
    self.assertLess(abs(cal.debiased_ece(conf, correct, 10, "mass")), 0.03)

  def test_prompts_share_the_query_and_render_compactly(self):
    fam = syn.RuleFamily(num_features=1, continuation_delimiter="", example_delimiter="")
    ev = syn.eval_set(fam, 3, 4, seed=0)
    t0, g0 = ev.prompts(fam, 0)
    t4, g4 = ev.prompts(fam, 4)
    np.testing.assert_array_equal(g0, g4)
    self.assertLen(t0[0], 1)                      # the query symbol only
    self.assertLen(t4[0], 4 * 2 + 1)
    self.assertEqual(t4[0][-1], t0[0])
    self.assertTrue(set(t4[0][1:8:2]) <= set("01"))
    with self.assertRaisesRegex(ValueError, "overlap"):
      syn.RuleFamily(alphabet="ab01", labels="01")


class StudyTest(absltest.TestCase):

  def test_splits_are_disjoint_and_cover(self):
    s = study.splits(100, seed=3)
    allidx = np.concatenate([s["A"], s["B"], s["C"]])
    self.assertLen(allidx, 100)
    self.assertLen(set(allidx.tolist()), 100)

  def test_tiny_study_end_to_end(self):
    workdir = self.create_tempdir().full_path
    config = icl_calibration.get_config("tiny")
    config.data_dir = self.create_tempdir().full_path
    summary = study.run(config, workdir)
    self.assertTrue(summary["smoke"])
    for name in ("report.md", "results.json", "ece_vs_shots.png", "accuracy_vs_shots.png",
                 "reliability_xs.png"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    cells = {(c["size"], c["k"], c["method"]): c for c in results["cells"]}
    self.assertEqual(len(cells), 3 * 3 + 3)     # xs x 3 shots x 3 methods + bayes x 3 shots
    for c in cells.values():
      lo, hi = c["ci"]["accuracy"]
      self.assertLessEqual(lo, c["metrics"]["accuracy"] + 1e-12)
      self.assertGreaterEqual(hi, c["metrics"]["accuracy"] - 1e-12)
    with open(os.path.join(workdir, "report.md")) as f:
      text = f.read()
    self.assertIn("Smoke-scale", text)
    self.assertIn("not resolved", text)

  def test_study_runs_unchanged_on_an_hf_checkpoint(self):
    import shutil  # pylint: disable=g-import-not-at-top
    from test_icl_eval import _byte_tokenizer_json  # pylint: disable=g-import-not-at-top
    d = os.path.join(self.create_tempdir().full_path, "llama")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "fixtures", "hf", "llama"), d)
    _byte_tokenizer_json(os.path.join(d, "tokenizer.json"))
    config = icl_calibration.get_config("tiny")
    config.checkpoint = "hf:" + d
    with self.assertRaisesRegex(Exception, "config.eval.prompt_prefix"):
      study.run(config, self.create_tempdir().full_path)   # no BOS, empty 0-shot prompts
    config.eval.prompt_prefix = "\n"
    workdir = self.create_tempdir().full_path
    summary = study.run(config, workdir)
    self.assertIn("model/acc_k8", summary)
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    self.assertEqual(results["runs"], [])            # nothing trained
    self.assertEqual({c["size"] for c in results["cells"]}, {"model", "bayes"})


if __name__ == "__main__":
  absltest.main()
