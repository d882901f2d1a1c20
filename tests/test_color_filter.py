"""CoLoR-Filter selection: exact global top-k against a numpy reference,
deterministic tie-breaking, invariance to shard count and row order, the
per-shard rule, Beam == in-process byte for byte, the baselines' scores
(random, conditional-only, fastText), the score store's commit protocol,
and the selection as a seqio Task / Mixture the LM path packs."""
import filecmp
import os
import random

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from data_pipelines.color_filter import domain_classifier
from data_pipelines.color_filter import score_store
from data_pipelines.color_filter import selection as sel
from data_pipelines.color_filter import selection_tasks
from data_pipelines.curation import io as cio

import color_testlib as tl


def _scores(rows, seed=0, decimals=1):
  """Scores with many exact ties (rounded), so tie-breaking matters."""
  rng = np.random.default_rng(seed)
  return {r["id"]: float(np.round(rng.normal(), decimals)) for r in rows}


def _reference(scores, k):
  """The k best ids by (-score, id), from numpy's lexsort."""
  ids = np.asarray(sorted(scores))
  vals = np.asarray([scores[i] for i in ids])
  order = np.lexsort((ids, -vals))   # last key is primary
  return [str(i) for i in ids[order[:k]]]


def _files(directory):
  out = {}
  for dirpath, _, names in os.walk(directory):
    for n in names:
      p = os.path.join(dirpath, n)
      out[os.path.relpath(p, directory)] = p
  return out


class SelectionTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rows = tl.synthetic_rows(90, seed=1)
    self.scores = _scores(self.rows)

  def _select(self, num_shards, tau=4.0, mode="global", shuffle_seed=None, **kw):
    rows = list(self.rows)
    if shuffle_seed is not None:
      random.Random(shuffle_seed).shuffle(rows)
    pool = self.create_tempdir().full_path
    shards = tl.write_shards(pool, rows, num_shards)
    out = self.create_tempdir().full_path
    summary = sel.select(shards, self.scores, out, tau=tau, mode=mode, **kw)
    return shards, out, summary

  def test_global_top_k_matches_a_numpy_reference(self):
    self.assertGreater(len(self.scores) - len(set(self.scores.values())), 20)   # ties exist
    _, out, summary = self._select(3, tau=4.0)
    k = 90 // 4
    chosen = sel.read_selection(out)
    self.assertLen(chosen, k)
    self.assertEqual(summary["num_selected"], k)
    self.assertEqual(summary["num_candidates"], 90)
    want = _reference(self.scores, k)
    by_rank = sorted(chosen, key=lambda r: r["select_rank"])
    self.assertEqual([r["id"] for r in by_rank], want)
    for r in chosen:
      self.assertEqual(r["select_score"], self.scores[r["id"]])
    self.assertEqual(summary["lowest_selected_score"], self.scores[want[-1]])
    self.assertEqual(sum(summary["domains"].values()), k)
    for path in cio.output_shards(out):   # rows sorted by id inside each shard
      ids = [r["id"] for r in cio.read_rows(path)]
      self.assertEqual(ids, sorted(ids))

  def test_invariant_to_shard_count_and_row_order(self):
    _, ref, _ = self._select(1)
    for num_shards, shuffle in ((3, 0), (7, 1), (90, 2)):
      _, out, _ = self._select(num_shards, shuffle_seed=shuffle)
      files_ref, files_out = _files(ref), _files(out)
      self.assertEqual(sorted(files_ref), sorted(files_out))
      for name in files_ref:
        self.assertTrue(filecmp.cmp(files_ref[name], files_out[name], shallow=False), name)

  def test_per_shard_keeps_each_shards_own_best(self):
    shards, out, summary = self._select(3, tau=3.0, mode="per_shard")
    chosen = {r["id"] for r in sel.read_selection(out)}
    expected = set()
    for path in shards:
      shard_scores = {r["id"]: self.scores[r["id"]] for r in cio.read_rows(path)}
      expected |= set(_reference(shard_scores, len(shard_scores) // 3))
    self.assertEqual(chosen, expected)
    self.assertEqual(summary["mode"], "per_shard")

  def test_rerun_into_the_same_directory_leaves_no_stale_shard(self):
    pool = self.create_tempdir().full_path
    shards = tl.write_shards(pool, self.rows, 2)
    out = self.create_tempdir().full_path
    sel.select(shards, self.scores, out, tau=1.0, num_output_shards=8)
    summary = sel.select(shards, self.scores, out, tau=90.0, num_output_shards=8)
    self.assertEqual(summary["num_selected"], 1)
    self.assertLen(sel.read_selection(out), 1)

  @parameterized.parameters("global", "per_shard")
  def test_beam_writes_the_same_bytes_as_in_process(self, mode):
    from data_pipelines.color_filter import selection_beam  # pylint: disable=g-import-not-at-top
    pool = self.create_tempdir().full_path
    shards = tl.write_shards(pool, self.rows, 4)
    a, b = self.create_tempdir().full_path, self.create_tempdir().full_path
    extra = {"note": "x"}
    sa = sel.select(shards, self.scores, a, tau=3.0, mode=mode, extra=extra)
    sb = selection_beam.select_beam(shards, self.scores, b, tau=3.0, mode=mode, extra=extra)
    self.assertEqual(sa, sb)
    fa, fb = _files(a), _files(b)
    self.assertEqual(sorted(fa), sorted(fb))
    for name in fa:
      self.assertTrue(filecmp.cmp(fa[name], fb[name], shallow=False), name)

  def test_bad_input_is_named(self):
    pool = self.create_tempdir().full_path
    shards = tl.write_shards(pool, self.rows + self.rows[:1], 2)
    out = self.create_tempdir().full_path
    with self.assertRaisesRegex(sel.SelectionError, "appears twice"):
      sel.select(shards, self.scores, out, tau=2.0)
    shards = tl.write_shards(self.create_tempdir().full_path, self.rows, 2)
    missing = dict(self.scores)
    del missing[self.rows[5]["id"]]
    with self.assertRaisesRegex(sel.SelectionError, self.rows[5]["id"]):
      sel.select(shards, missing, out, tau=2.0)
    with self.assertRaisesRegex(sel.SelectionError, "tau=0.5"):
      sel.select(shards, self.scores, out, tau=0.5)
    with self.assertRaisesRegex(sel.SelectionError, "mode='top'"):
      sel.select(shards, self.scores, out, tau=2.0, mode="top")
    with self.assertRaisesRegex(FileNotFoundError, "nope"):
      sel.select([os.path.join(pool, "nope.jsonl.zst")], self.scores, out, tau=2.0)

  def test_num_to_keep(self):
    self.assertEqual(sel.num_to_keep(100, 1.0), 100)
    self.assertEqual(sel.num_to_keep(100, 3.0), 33)
    self.assertEqual(sel.num_to_keep(10, 100.0), 1)
    self.assertEqual(sel.num_to_keep(0, 2.0), 0)
    self.assertEqual(sel.num_to_keep(30, 3.0), 10)   # no float rounding down to 9


class MethodScoresTest(absltest.TestCase):

  def test_color_cond_only_fasttext_random(self):
    ids = ["a", "b", "c"]
    prior = {"a": 3.0, "b": 2.5, "c": 4.0}
    cond = {"a": 2.0, "b": 2.4, "c": 3.9}
    prob = {"a": 0.1, "b": 0.9, "c": 0.5}
    color = sel.method_scores("color", ids, prior_loss=prior, cond_loss=cond)
    for i in ids:
      self.assertAlmostEqual(color[i], prior[i] - cond[i], places=12)
    self.assertEqual(sel.method_scores("cond_only", ids, cond_loss=cond),
                     {i: -cond[i] for i in ids})
    self.assertEqual(sel.method_scores("fasttext", ids, target_prob=prob), prob)
    r0 = sel.method_scores("random", ids, seed=0)
    self.assertEqual(r0, sel.method_scores("random", ids, seed=0))
    self.assertNotEqual(r0, sel.method_scores("random", ids, seed=1))
    many = sel.method_scores("random", [str(i) for i in range(4000)], seed=3)
    vals = np.asarray(list(many.values()))
    self.assertTrue(np.all((vals >= 0) & (vals < 1)))
    self.assertAlmostEqual(vals.mean(), 0.5, delta=0.02)   # 6 sigma ~ 0.027
    self.assertAlmostEqual(np.mean(vals < 0.25), 0.25, delta=0.03)

  def test_missing_and_non_finite(self):
    with self.assertRaisesRegex(sel.SelectionError, "needs cond_loss"):
      sel.method_scores("cond_only", ["a"])
    with self.assertRaisesRegex(sel.SelectionError, "prior_loss: no score for document 'b'"):
      sel.method_scores("color", ["a", "b"], prior_loss={"a": 1.0}, cond_loss={"a": 1, "b": 1})
    with self.assertRaisesRegex(sel.SelectionError, "non-finite"):
      sel.method_scores("cond_only", ["a"], cond_loss={"a": float("nan")})
    with self.assertRaisesRegex(sel.SelectionError, "method='best'"):
      sel.method_scores("best", ["a"])


class FastTextTest(absltest.TestCase):

  def test_classifier_ranks_the_target_domain_first(self):
    target = [r for r in tl.synthetic_rows(240, seed=2) if r["domain"] == "python"]
    pool = tl.synthetic_rows(120, seed=3)
    model = domain_classifier.train_domain_classifier(target, pool, self.create_tempdir().full_path,
                                                      epoch=5, dim=16)
    probs = domain_classifier.target_probabilities(model, pool)
    same = np.mean([probs[r["id"]] for r in pool if r["domain"] == "python"])
    other = np.mean([probs[r["id"]] for r in pool if r["domain"] != "python"])
    self.assertGreater(same, 3 * other)
    scores = sel.method_scores("fasttext", [r["id"] for r in pool], target_prob=probs)
    best = _reference(scores, 20)
    doms = {r["id"]: r["domain"] for r in pool}
    self.assertEqual(sum(doms[i] == "python" for i in best), 20)   # all 20 python docs
    model2 = domain_classifier.train_domain_classifier(target, pool,
                                                       self.create_tempdir().full_path,
                                                       epoch=5, dim=16)
    # fastText's trainer is not bit-reproducible (its worker thread runs beside a
    # progress thread), so a retrain must give the same selection, not the same floats.
    probs2 = domain_classifier.target_probabilities(model2, pool)
    self.assertEqual(set(best), set(_reference(
        sel.method_scores("fasttext", [r["id"] for r in pool], target_prob=probs2), 20)))


class ScoreStoreTest(absltest.TestCase):

  def test_commit_resume_and_mismatch(self):
    d = os.path.join(self.create_tempdir().full_path, "s")
    ids = [f"doc{i}" for i in range(10)]
    cols = {"loss": "float64", "tokens": "int64"}
    st = score_store.ScoreStore.create_or_resume(d, ids, cols, block_size=4, fingerprint="m1")
    self.assertEqual(st.pending(), [0, 1, 2])
    self.assertEqual(st.pending(1, 2), [1])
    st.commit(1, {"loss": np.arange(4.0), "tokens": np.arange(4)})
    with self.assertRaisesRegex(score_store.ScoreStoreError, "not scored yet"):
      score_store.ScoreStore.open(d)
    again = score_store.ScoreStore.create_or_resume(d, ids, cols, block_size=4, fingerprint="m1")
    self.assertEqual(again.pending(), [0, 2])
    np.testing.assert_array_equal(again.column("loss")[4:8], np.arange(4.0))
    self.assertTrue(np.isnan(again.column("loss")[:4]).all())
    again.commit(0, {"loss": np.ones(4), "tokens": np.ones(4)})
    again.commit(2, {"loss": np.full(2, 7.0), "tokens": np.full(2, 7)})
    done = score_store.ScoreStore.open(d)
    self.assertEqual(done.ids(), ids)
    self.assertEqual(done.as_dict("loss")["doc9"], 7.0)
    with self.assertRaisesRegex(score_store.ScoreStoreError, "fingerprint"):
      score_store.ScoreStore.create_or_resume(d, ids, cols, block_size=4, fingerprint="m2")
    with self.assertRaisesRegex(score_store.ScoreStoreError, "ids"):
      score_store.ScoreStore.create_or_resume(d, ids[::-1], cols, block_size=4, fingerprint="m1")
    with self.assertRaisesRegex(score_store.ScoreStoreError, "'doc1' appears twice"):
      score_store.ScoreStore.create_or_resume(d + "x", ["doc1", "doc1"], cols, block_size=4,
                                              fingerprint="m1")
    with self.assertRaisesRegex(score_store.ScoreStoreError, "shape"):
      again.commit(0, {"loss": np.ones(3), "tokens": np.ones(3)})
    with self.assertRaisesRegex(KeyError, "no column 'nll'"):
      done.column("nll")


class SeqioTaskTest(absltest.TestCase):

  def test_selection_packs_as_a_task_and_a_mixture(self):
    rows = tl.synthetic_rows(40, seed=4)
    scores = _scores(rows, seed=4, decimals=6)
    shards = tl.write_shards(self.create_tempdir().full_path, rows, 2)
    outs = []
    for tau in (2.0, 4.0):
      out = os.path.join(self.create_tempdir().full_path, f"sel{tau}")
      sel.select(shards, scores, out, tau=tau)
      outs.append(out)
    name = selection_tasks.register_selection_task("color_test_sel_a", outs[0])
    from data_pipelines.curation import seqio_tasks  # pylint: disable=g-import-not-at-top
    arrays = seqio_tasks.packed_task_arrays(name, "train", 64)
    self.assertEqual(arrays["targets"].shape[1], 64)
    text = bytes(int(t) - 3 for t in arrays["targets"].reshape(-1) if t >= 3).decode()
    selected = sel.read_selection(outs[0])
    self.assertEqual(sum(len(r["text"].encode()) for r in selected),
                     int((arrays["targets"] >= 3).sum()))   # every byte, once
    self.assertIn(selected[0]["text"][:40], text)
    selection_tasks.register_selection_task("color_test_sel_b", outs[1])
    mix = selection_tasks.register_selection_mixture(
        "color_test_mix", {"color_test_sel_a": 1.0, "color_test_sel_b": 1.0})
    mixed = seqio_tasks.packed_mixture_arrays(mix, "train", 64, num_sequences=5)
    self.assertEqual(mixed["targets"].shape, (5, 64))
    from data_pipelines import lm_sources  # pylint: disable=g-import-not-at-top
    self.assertEqual(lm_sources.curated_shards(outs[0]), cio.output_shards(outs[0]))
    with self.assertRaisesRegex(FileNotFoundError, "no selection shards"):
      selection_tasks.register_selection_task("color_test_none", self.create_tempdir().full_path)


if __name__ == "__main__":
  absltest.main()
