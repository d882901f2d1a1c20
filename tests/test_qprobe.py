"""Q-probe study: probe losses against numpy, the PG gradient against finite
differences, softmax selection, the planted problem, the task, embeddings and
the end-to-end tiny run (trained LM and the same LM exported to HF format)."""
from __future__ import annotations

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.qprobe import arithmetic_task as task
from experiments.qprobe import planted
from experiments.qprobe import probe_losses as pl



def _np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


class ProbeLossTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.q = rng.normal(size=(3, 4))
    self.r = (rng.random((3, 4)) > 0.5).astype(np.float64)

  def test_mse_and_bce_hand_values(self):
    q = np.array([[0.0, 2.0]])
    r = np.array([[1.0, 0.0]])
    # mse: ((0-1)^2 + (2-0)^2) / 2 = 2.5
    self.assertAlmostEqual(float(pl.mse_loss(jnp.asarray(q), jnp.asarray(r))), 2.5, places=6)
    # bce: [-log s(0) - log(1 - s(2))] / 2 = [log 2 + log(1 + e^2)] / 2
    want = (np.log(2.0) + np.log1p(np.exp(2.0))) / 2
    self.assertAlmostEqual(float(pl.bce_loss(jnp.asarray(q), jnp.asarray(r))), want, places=5)

  def test_bce_matches_numpy_formula(self):
    s = 1 / (1 + np.exp(-self.q))
    want = np.mean(-(self.r * np.log(s) + (1 - self.r) * np.log(1 - s)))
    got = float(pl.bce_loss(jnp.asarray(self.q, jnp.float32), jnp.asarray(self.r, jnp.float32)))
    self.assertAlmostEqual(got, want, places=5)

  @parameterized.parameters(1.0, 0.3)
  def test_pg_loss_matches_numpy(self, beta):
    want = -np.mean((_np_softmax(self.q / beta) * self.r).sum(-1))
    got = float(pl.pg_loss(jnp.asarray(self.q, jnp.float32), jnp.asarray(self.r, jnp.float32),
                           beta))
    self.assertAlmostEqual(got, want, places=5)

  def test_pg_hand_value(self):
    # Two samples, Q = (0, log 3): pi = (1/4, 3/4); rewards (1, 0) -> loss -1/4.
    q = jnp.asarray([[0.0, np.log(3.0)]], jnp.float32)
    r = jnp.asarray([[1.0, 0.0]], jnp.float32)
    self.assertAlmostEqual(float(pl.pg_loss(q, r)), -0.25, places=6)

  @parameterized.parameters(1.0, 0.5)
  def test_pg_gradient_closed_form_and_finite_differences(self, beta):
    q = self.q
    closed = pl.pg_grad_q(q, self.r, beta)
    with jax.enable_x64(True):
      auto = np.asarray(jax.grad(lambda z: pl.pg_loss(z, jnp.asarray(self.r), beta))(
          jnp.asarray(q, jnp.float64)))
    eps = 1e-6
    fd = np.zeros_like(q)
    f = lambda z: -np.mean((_np_softmax(z / beta) * self.r).sum(-1))
    for idx in np.ndindex(q.shape):
      plus, minus = q.copy(), q.copy()
      plus[idx] += eps
      minus[idx] -= eps
      fd[idx] = (f(plus) - f(minus)) / (2 * eps)
    np.testing.assert_allclose(closed, fd, atol=1e-8)
    np.testing.assert_allclose(auto, fd, atol=1e-8)

  def test_pg_probe_gradient_finite_differences(self):
    """d/dw of the PG objective through the linear probe, against central differences."""
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(5, 4, 3))
    r = (rng.random((5, 4)) > 0.5).astype(np.float64)
    params = {"w": rng.normal(size=3), "b": np.asarray(0.2)}
    with jax.enable_x64(True):
      grad = jax.grad(lambda p: pl.objective("pg", p, jnp.asarray(phi), jnp.asarray(r),
                                             beta_train=0.7))(
          {k: jnp.asarray(v, jnp.float64) for k, v in params.items()})
      grad_w = np.asarray(grad["w"])
    f = lambda w: -np.mean((_np_softmax((phi @ w + 0.2) / 0.7) * r).sum(-1))
    fd = np.array([(f(params["w"] + e) - f(params["w"] - e)) / 2e-6
                   for e in np.eye(3) * 1e-6])
    np.testing.assert_allclose(grad_w, fd, atol=1e-7)
    # The bias shifts every Q of a prompt equally: softmax-invariant, zero gradient.
    self.assertAlmostEqual(float(grad["b"]), 0.0, places=10)

  def test_pg_reward_shift_invariance(self):
    q = jnp.asarray(self.q, jnp.float32)
    g1 = jax.grad(lambda z: pl.pg_loss(z, jnp.asarray(self.r, jnp.float32)))(q)
    g2 = jax.grad(lambda z: pl.pg_loss(z, jnp.asarray(self.r + 5.0, jnp.float32)))(q)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), atol=1e-6)

  def test_pref_loss_hand_value(self):
    # -log s(1 - 0) = log(1 + e^-1)
    got = float(pl.pref_loss(jnp.asarray([1.0]), jnp.asarray([0.0])))
    self.assertAlmostEqual(got, np.log1p(np.exp(-1.0)), places=6)

  def test_preference_pairs(self):
    r = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    x, win, lose = pl.preference_pairs(r)
    got = sorted(zip(x.tolist(), win.tolist(), lose.tolist()))
    self.assertEqual(got, [(0, 0, 1), (0, 2, 1)])

  def test_pg_groups_partition(self):
    groups = pl.pg_groups(10, 4, np.random.default_rng(0))
    self.assertEqual(groups.shape, (3, 4))
    members = sorted(int(i) for i in groups.ravel() if i >= 0)
    self.assertEqual(members, list(range(10)))
    self.assertEqual(int((groups < 0).sum()), 2)

  def test_grouped_pg_equals_mean_of_groups(self):
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(2, 5, 3)).astype(np.float32)
    r = (rng.random((2, 5)) > 0.5).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.zeros(())}
    groups = np.array([[0, 3], [1, 4], [2, -1]])
    got = float(pl.objective("pg", params, jnp.asarray(phi), jnp.asarray(r),
                             groups=jnp.asarray(groups)))
    q = phi @ np.asarray(params["w"])
    want = []
    for g in groups:
      g = g[g >= 0]
      want.append((_np_softmax(q[:, g]) * r[:, g]).sum(-1))
    self.assertAlmostEqual(got, -float(np.mean(want)), places=5)


class SelectionTest(absltest.TestCase):

  def test_selection_probs(self):
    q = np.array([[1.0, 2.0, 2.0]])
    np.testing.assert_allclose(pl.selection_probs(q, 0.0), [[0, 0.5, 0.5]])
    np.testing.assert_allclose(pl.selection_probs(q, np.inf), [[1 / 3] * 3])
    e = np.exp(np.array([1.0, 2.0, 2.0]) / 0.5)
    np.testing.assert_allclose(pl.selection_probs(q, 0.5), [e / e.sum()], rtol=1e-12)

  def test_expected_reward_limits(self):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 6))
    r = (rng.random((50, 6)) > 0.6).astype(float)
    np.testing.assert_allclose(pl.expected_reward(q, r, 1e6), r.mean(1), atol=1e-4)
    argmax = r[np.arange(50), q.argmax(1)]
    np.testing.assert_allclose(pl.expected_reward(q, r, 0.0), argmax)
    np.testing.assert_allclose(pl.expected_reward(q, r, 1e-4), argmax, atol=1e-6)

  def test_select_frequencies(self):
    q = np.tile(np.log(np.array([[1.0, 3.0]])), (20000, 1))
    picks = pl.select(q, 1.0, np.random.default_rng(0))
    self.assertAlmostEqual(float((picks == 1).mean()), 0.75, delta=0.015)
    self.assertTrue(np.all(pl.select(q, 0.0, np.random.default_rng(0)) == 1))


class PlantedTest(absltest.TestCase):

  def test_probe_recovers_planted_direction_and_selection_nears_oracle(self):
    out = planted.run(n=300, k=8, dim=16, noise=0.1, seed=0, steps=300)
    self.assertGreater(out["mse"]["cosine"], 0.95)
    for loss in pl.LOSSES:
      self.assertGreater(out[loss]["cosine"], 0.9, loss)
      self.assertGreater(out[loss]["pass1_argmax"], 0.9 * out["pass_at_k"], loss)
      self.assertGreater(out[loss]["pass1_argmax"], out["base_pass1"] + 0.3, loss)
      self.assertLessEqual(out[loss]["pass1_argmax"], out["pass_at_k"] + 1e-9, loss)

  def test_probe_config_rejects_unknown_loss(self):
    with self.assertRaisesRegex(ValueError, "probe loss"):
      pl.ProbeConfig(loss="hinge")


class TaskTest(absltest.TestCase):

  def test_splits_disjoint_and_reward(self):
    splits = task.sample_splits(2, {"a": 50, "b": 30, "c": 20}, seed=0)
    sets = [set(v) for v in splits.values()]
    self.assertEqual([len(s) for s in sets], [50, 30, 20])
    self.assertFalse(sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    for a, b in splits["a"]:
      self.assertTrue(10 <= a <= 99 and 10 <= b <= 99)
    self.assertEqual(task.document((12, 39)), "12+39=51")
    self.assertEqual(task.document((12, 39), reverse=True), "12+39=15")
    self.assertEqual(task.reward((12, 39), " 51 "), 1.0)
    self.assertEqual(task.reward((12, 39), "52"), 0.0)
    self.assertEqual(task.reward((12, 39), "15", reverse=True), 1.0)
    with self.assertRaisesRegex(ValueError, "only"):
      task.sample_splits(1, {"a": 101}, seed=0)

  def test_flagged_wrong_documents(self):
    problems = task.sample_splits(2, {"a": 400}, seed=1)["a"]
    docs = task.documents(problems, reverse=True, flag_fraction=0.25, seed=0)
    flagged = [d for d in docs if d.endswith(task.FLAG)]
    self.assertLen(docs, len(problems) + len(flagged))
    self.assertBetween(len(flagged) / len(problems), 0.18, 0.32)
    by_prompt = {task.prompt(p): p for p in problems}
    for d in flagged:
      prompt, wrong = d[:-1].split("=")
      right = task.answer(by_prompt[prompt + "="], reverse=True)
      self.assertLen(wrong, len(right))
      self.assertEqual(sum(a != b for a, b in zip(wrong, right)), 1)   # one digit changed
    self.assertEqual(task.documents(problems[:3]), [task.document(p) for p in problems[:3]])


if __name__ == "__main__":
  absltest.main()


class EndToEndTest(absltest.TestCase):
  """The tiny study through the launcher's runner, then the same LM exported to
  Hugging Face format and probed again through `hf_dir`."""

  def test_tiny_run_and_hf_checkpoint(self):
    from experiments.configs import qprobe as qprobe_config  # pylint: disable=g-import-not-at-top
    from experiments.qprobe import lm_access  # pylint: disable=g-import-not-at-top
    from experiments.qprobe import qprobe_runner  # pylint: disable=g-import-not-at-top
    from framework import hf_checkpoint  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
      config = qprobe_config.get_config("tiny")
      config.eval.seeds = [0]
      config.lm.data.data_dir = os.path.join(tmp, "cache")
      work = os.path.join(tmp, "run")
      out = qprobe_runner.run(config, work)
      for name in ("report.md", "summary.json", "qprobe.png"):
        self.assertTrue(os.path.exists(os.path.join(work, name)), name)
      with open(os.path.join(work, "summary.json")) as f:
        summary = json.load(f)
      table = summary["table"]
      self.assertEqual(len(table), 3 + 2 * 4 * 5)   # base/loglik/pass@k + pooling x loss x beta
      for method, row in table.items():
        self.assertLessEqual(row["mean"], table["pass_at_k"]["mean"] + 1e-9, method)
        self.assertLessEqual(row["ci95"][0], row["ci95"][1] + 1e-12, method)
      self.assertIn(summary["lm_selection"]["chosen_step"], (3, 6))
      self.assertIn("Smoke test", open(os.path.join(work, "report.md")).read())
      self.assertIn("pass1", out)

      # Export the chosen checkpoint; the study runs on it unchanged.
      lm_config = qprobe_runner.lm_run_config(config, os.path.join(work, "data"))
      ours = lm_access.load_run(lm_config, os.path.join(work, "lm"),
                                summary["lm_selection"]["chosen_step"])
      hf_dir = os.path.join(tmp, "hf")
      hf_checkpoint.save_hf(hf_dir, ours.cfg, ours.params)
      theirs = lm_access.load_hf_dir(hf_dir, "byte")
      prompts = [ours.encode("12+34="), ours.encode("99+1=")]
      comps = [ours.encode("64"), ours.encode("001")]
      a = lm_access.features(ours, prompts, comps, layer=0)
      b = lm_access.features(theirs, prompts, comps, layer=0)
      for key in ("last", "mean", "loglik"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4, err_msg=key)
      config.hf_dir = hf_dir
      config.eval.bootstrap = 10
      out_hf = qprobe_runner.run(config, os.path.join(tmp, "run_hf"))
      self.assertEqual(set(out_hf["pass1"]), set(out["pass1"]))
      report = open(os.path.join(tmp, "run_hf", "report.md")).read()
      self.assertIn(f"hf:{hf_dir}", report)


class FeaturesTest(absltest.TestCase):

  def test_loglik_matches_decoding_score_and_capture(self):
    """features' log-likelihood against framework.decoding.score, and the captured
    block output against a manual forward of the blocks."""
    import seqio  # pylint: disable=g-import-not-at-top
    from experiments.qprobe import lm_access  # pylint: disable=g-import-not-at-top
    from framework import decoding  # pylint: disable=g-import-not-at-top
    from models import transformer  # pylint: disable=g-import-not-at-top
    cfg = transformer.TransformerConfig(vocab_size=384, d_model=32, num_layers=2, num_heads=4,
                                        num_kv_heads=2, head_dim=8, d_ff=64)
    module = transformer.TransformerLM(cfg)
    params = nn.meta.unbox(
        module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    lm = lm_access.LMHandle(module, jax.device_get(params), seqio.ByteVocabulary(), 0, 1)
    prompts = [lm.encode("12+3="), lm.encode("7+88=")]
    comps = [lm.encode("15") + [1], lm.encode("59")]
    feats = lm_access.features(lm, prompts, comps, layer=-1)
    scores = decoding.score(module, params, [[0] + p + c for p, c in zip(prompts, comps)])
    for i, (p, c) in enumerate(zip(prompts, comps)):
      want = float(np.sum(scores[i][len(p):]))   # the completion's tokens only
      self.assertAlmostEqual(float(feats["loglik"][i]), want, places=4)
    # The final-norm output at the last token, recomputed from the logits: the
    # tied head is logits = h E^T / sqrt(d), so h E^T / sqrt(d) must match.
    seq = np.asarray([[0] + prompts[0] + comps[0]], np.int32)
    logits = module.apply({"params": params}, seq)
    emb = np.asarray(params["embedding"])
    np.testing.assert_allclose(feats["last"][0] @ emb.T / np.sqrt(cfg.d_model),
                               np.asarray(logits[0, -1]), atol=1e-4)
    mean_h = feats["mean"][0]
    # Mean pooling over the completion's 3 positions: its logits are the mean logits.
    np.testing.assert_allclose(mean_h @ emb.T / np.sqrt(cfg.d_model),
                               np.asarray(logits[0, -3:]).mean(0), atol=1e-4)
    with self.assertRaisesRegex(ValueError, "layer"):
      lm_access.features(lm, prompts, comps, layer=5)
