"""fastText quality classifier (train, score, thresholds), mixing by rates,
and seqio tasks/mixtures over curated shards (ByteVocabulary, packed)."""
import json
import os
import random
import tempfile

from absl.testing import absltest
import numpy as np

from data_pipelines.curation import curation_config as config_lib
from data_pipelines.curation import io as cio
from data_pipelines.curation import mixing
from data_pipelines.curation import quality
from data_pipelines.curation import seqio_tasks
from tools import make_test_warc


def _write_jsonl(path, texts):
  with open(path, "w") as f:
    for t in texts:
      f.write(json.dumps({"text": t}) + "\n")


class QualityTest(absltest.TestCase):

  def test_train_score_and_thresholds(self):
    d = tempfile.mkdtemp()
    rng = random.Random(0)
    pos = [make_test_warc.topic_text(t)[:1500] for t in make_test_warc.TRAIN_TOPICS]
    neg = [make_test_warc.spam_text(rng, 5) for _ in range(len(pos))]
    _write_jsonl(os.path.join(d, "pos.jsonl"), pos)
    _write_jsonl(os.path.join(d, "neg.jsonl"), neg)
    c = config_lib.default_config().quality
    c.dim = 8
    path = quality.train([os.path.join(d, "pos.jsonl")], [os.path.join(d, "neg.jsonl")],
                         os.path.join(d, "m.bin"), c)
    model = quality.load(path)
    held_pos = make_test_warc.topic_text("execmodel")[:2000]
    held_neg = make_test_warc.spam_text(random.Random(7), 6)
    s_pos, s_neg = quality.score(model, held_pos, "hq"), quality.score(model, held_neg, "hq")
    self.assertGreater(s_pos, 0.7)
    self.assertLess(s_neg, 0.1)
    # Same files, same seed -> same model file.
    quality.train([os.path.join(d, "pos.jsonl")], [os.path.join(d, "neg.jsonl")],
                  os.path.join(d, "m2.bin"), c)
    with open(path, "rb") as f1, open(os.path.join(d, "m2.bin"), "rb") as f2:
      self.assertEqual(f1.read(), f2.read())

  def test_top_fraction_threshold(self):
    scores = [0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4, 0.0]
    self.assertEqual(quality.top_fraction_threshold(scores, 0.1), 0.9)
    self.assertEqual(quality.top_fraction_threshold(scores, 0.3), 0.7)
    self.assertEqual(quality.top_fraction_threshold(scores, 0.01), 0.9)   # at least one kept
    self.assertEqual(sum(s >= quality.top_fraction_threshold(scores, 0.5) for s in scores), 5)


class MixingTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.d = tempfile.mkdtemp()
    self.src = {}
    for name, n in (("a", 100), ("b", 30)):
      path = os.path.join(self.d, name, "s.jsonl.zst")
      cio.write_jsonl_zst(path, [{"id": f"{name}{i}", "url": "", "source": name, "text": f"{name} doc {i}"}
                                 for i in range(n)])
      self.src[name] = os.path.join(self.d, name, "*.jsonl.zst")

  def test_plan(self):
    self.assertEqual(mixing.plan({"a": 100, "b": 30}, {"a": 1, "b": 1}, None), {"a": 30, "b": 30})
    self.assertEqual(mixing.plan({"a": 100, "b": 30}, {"a": 3, "b": 1}, 80), {"a": 60, "b": 20})

  def test_mix_rates_and_upsampling(self):
    out = mixing.mix(self.src, {"a": 1, "b": 1}, os.path.join(self.d, "m1"), total=120, seed=3)
    self.assertEqual(out["sources"]["a"]["docs"], 60)
    self.assertEqual(out["sources"]["b"]["docs"], 60)       # 30 available: two epochs
    self.assertAlmostEqual(out["sources"]["b"]["epochs"], 2.0)
    rows = list(cio.read_rows(os.path.join(self.d, "m1", "mixed-00000.jsonl.zst")))
    self.assertLen(rows, 120)
    b_ids = [r["id"] for r in rows if r["source"] == "b"]
    self.assertEqual(sorted(set(b_ids)), sorted(f"b{i}" for i in range(30)))
    self.assertLen({r["id"] for r in rows if r["source"] == "a"}, 60)   # no repeats
    again = mixing.mix(self.src, {"a": 1, "b": 1}, os.path.join(self.d, "m2"), total=120, seed=3)
    self.assertEqual(again, {**out})
    self.assertEqual(rows, list(cio.read_rows(os.path.join(self.d, "m2", "mixed-00000.jsonl.zst"))))


class SeqioTest(absltest.TestCase):

  def test_task_and_mixture_from_curated_shards(self):
    d = tempfile.mkdtemp()
    texts = {"web": [f"web page {i} " + "lorem " * (i % 7) for i in range(40)],
             "ref": [f"reference text {i}." for i in range(40)]}
    for name, ts in texts.items():
      cio.write_jsonl_zst(os.path.join(d, name, "crawl-00000.jsonl.zst"),
                          [{"id": f"{name}{i}", "url": "", "source": name, "text": t} for i, t in enumerate(ts)])
      cio.write_jsonl_zst(os.path.join(d, name, "crawl-00000.attrs.jsonl.zst"), [{"order": "x"}])
    seqio_tasks.register_curated_task("curation_test_web", os.path.join(d, "web", "*.jsonl.zst"))
    seqio_tasks.register_curated_task("curation_test_ref", os.path.join(d, "ref", "*.jsonl.zst"))
    arrays = seqio_tasks.packed_task_arrays("curation_test_web", "train", 64)
    self.assertEqual(sorted(arrays), ["inputs", "positions", "segment_ids", "targets", "weights"])
    # ByteVocabulary: id = byte + 3, EOS = 1; packed segments decode to the documents.
    tgt, seg = arrays["targets"], arrays["segment_ids"]
    decoded = []
    for row, s in zip(tgt, seg):
      for k in range(1, s.max() + 1):
        ids = row[s == k]
        self.assertEqual(ids[-1], 1)
        decoded.append(bytes(int(i) - 3 for i in ids[:-1]).decode())
    self.assertEqual(sorted(decoded), sorted(texts["web"]))
    np.testing.assert_array_equal(arrays["inputs"][:, 1:][seg[:, 1:] == seg[:, :-1]],
                                  tgt[:, :-1][seg[:, 1:] == seg[:, :-1]])
    seqio_tasks.register_curated_mixture("curation_test_mix", {"curation_test_web": 3.0,
                                                              "curation_test_ref": 1.0})
    mix = seqio_tasks.packed_mixture_arrays("curation_test_mix", "train", 64, num_sequences=60)
    self.assertEqual(mix["targets"].shape, (60, 64))
    text = b"".join(bytes(int(i) - 3 for i in row if i > 2) for row in mix["targets"])
    n_web, n_ref = text.count(b"web page"), text.count(b"reference text")
    self.assertGreater(n_web, n_ref)   # rate 3 : 1 (documents differ in length)


if __name__ == "__main__":
  absltest.main()
