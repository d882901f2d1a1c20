"""Dedup: Bloom filter sizing and false-positive rate, DCLM paragraph/document
Bloom dedup, MinHash Jaccard estimates, LSH band choice and clustering."""
import math
import random

from absl.testing import absltest
import numpy as np

from data_pipelines.curation import curation_config as config_lib
from data_pipelines.curation import dedup

C = config_lib.default_config().dedup


def _words(rng, n, vocab=5000):
  return " ".join(f"w{rng.randrange(vocab)}" for _ in range(n))


class ExactTest(absltest.TestCase):

  def test_normalised_key(self):
    self.assertEqual(dedup.exact_key("Hello   World\n"), dedup.exact_key("hello world"))
    self.assertNotEqual(dedup.exact_key("hello world"), dedup.exact_key("hello worlds"))

  def test_drops_keep_first_in_order(self):
    from data_pipelines.curation import stages  # pylint: disable=g-import-not-at-top
    self.assertEqual(stages.exact_drops([["b/2", "a/1", "c/0"], ["z/9"]]), {"b/2": "a/1", "c/0": "a/1"})


class BloomTest(absltest.TestCase):

  def test_size_formula(self):
    m, k = dedup.bloom_size(1_000_000, 0.01)
    self.assertEqual(m, math.ceil(-1e6 * math.log(0.01) / math.log(2) ** 2))   # ~9.59 bits/item
    self.assertEqual(k, 7)
    self.assertEqual(dedup.BloomFilter(1_000_000, 0.01).nbytes, (m + 7) // 8)

  def test_no_false_negatives_and_fp_rate(self):
    rng = np.random.default_rng(0)
    bf = dedup.BloomFilter(20_000, 0.01)
    items = rng.integers(0, 2**63, 20_000, dtype=np.uint64)
    bf.add(items)
    self.assertTrue(bf.contains(items).all())
    fresh = rng.integers(0, 2**63, 50_000, dtype=np.uint64)
    fp = bf.contains(fresh).mean()
    self.assertLess(fp, 0.02)     # designed for 1%
    self.assertGreater(fp, 0.002)

  def test_paragraph_and_document_removal(self):
    rng = random.Random(0)
    bf = dedup.BloomFilter(10_000, 1e-4)
    c = C.bloom
    p1, p2, p3 = _words(rng, 40), _words(rng, 40), _words(rng, 40)
    first = dedup.bloom_dedup_one(bf, p1 + "\n" + p2, c)
    self.assertEqual(first.text, p1 + "\n" + p2)          # nothing seen yet
    # Shares p1 with the first doc (1/2 of its n-grams < 0.8): only p1 goes.
    second = dedup.bloom_dedup_one(bf, p1 + "\n" + p3, c)
    self.assertEqual(second.text, p3)
    self.assertEqual(second.removed_paragraphs, 1)
    self.assertAlmostEqual(second.doc_fraction, 0.5)
    # Entirely seen before: the whole document goes.
    third = dedup.bloom_dedup_one(bf, p2 + "\n" + p3, c)
    self.assertIsNone(third.text)
    # 18 of its 28 13-grams were seen (0.64 < 0.8): the paragraph stays.
    p4 = " ".join(p3.split()[:30] + [f"new{i}" for i in range(10)])
    fourth = dedup.bloom_dedup_one(bf, p4, c)
    self.assertEqual(fourth.text, p4)

  def test_short_paragraph_is_one_ngram(self):
    self.assertEqual(len(dedup.ngram_hashes("a b c".split(), 13)), 1)
    self.assertEqual(len(dedup.ngram_hashes([f"w{i}" for i in range(20)], 13)), 8)
    self.assertEqual(dedup.count_ngrams("a b c\n\n" + " ".join(["x"] * 20), 13), 1 + 8)


class MinHashTest(absltest.TestCase):

  def test_jaccard_estimate_matches_exact(self):
    rng = np.random.default_rng(1)
    mh = dedup.make_minhasher(256, 5, seed=3)
    universe = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    for overlap in (0.2, 0.5, 0.9):
      n_common = int(overlap * 1000)
      a = np.concatenate([universe[:n_common], universe[1000:2000 - n_common]])
      b = np.concatenate([universe[:n_common], universe[2000:3000 - n_common]])
      exact = n_common / len(np.union1d(a, b))
      est = dedup.estimated_jaccard(dedup.signature(mh, a), dedup.signature(mh, b))
      self.assertLess(abs(est - exact), 4 * math.sqrt(exact * (1 - exact) / 256) + 0.01)

  def test_signature_is_blockwise_min(self):
    mh = dedup.make_minhasher(16, 5, seed=0)
    x = np.arange(1, 10_000, dtype=np.uint64) * np.uint64(2654435761)
    ref = (((mh.a[:, None] * x[None, :] + mh.b[:, None]) >> np.uint64(32)).min(1)).astype(np.uint32)
    np.testing.assert_array_equal(dedup.signature(mh, x, block=333), ref)

  def test_bands_rows_threshold(self):
    for t in (0.5, 0.7, 0.8, 0.9):
      b, r = dedup.optimal_bands_rows(t, 128)
      self.assertLessEqual(b * r, 128)
      # The S-curve's steepest point (1/b)^(1/r) lies near the target threshold.
      self.assertLess(abs((1 / b) ** (1 / r) - t), 0.1)
      p = dedup.lsh_collision_probability(np.array([t - 0.3, t + 0.1 if t < 0.9 else 0.99]), b, r)
      self.assertLess(p[0], 0.2)
      self.assertGreater(p[1], 0.8)

  def test_clusters_and_survivors(self):
    rng = random.Random(2)
    c = C.minhash
    mh = dedup.make_minhasher(c.num_perm, c.ngram, c.seed)
    base = [_words(rng, 300) for _ in range(4)]
    near = base[0].split()
    for i in range(0, 300, 100):
      near[i] = "edited"
    docs = {"a/0": base[0], "a/1": base[1], "b/0": " ".join(near), "b/1": base[2], "c/0": base[0],
            "c/1": base[3]}
    sigs = [(k, dedup.signature(mh, dedup.shingles(t, c.ngram))) for k, t in sorted(docs.items())]
    clusters = dedup.minhash_clusters(sigs, c)
    self.assertEqual(clusters, {"a/0": "a/0", "b/0": "a/0", "c/0": "a/0"})

  def test_connected_components_root_is_min(self):
    comp = dedup.connected_components([("c", "d"), ("b", "c"), ("x", "y")])
    self.assertEqual(comp, {"b": "b", "c": "b", "d": "b", "x": "x", "y": "x"})


if __name__ == "__main__":
  absltest.main()
