"""The LM input path: seqio task + packing, deterministic resumable batching."""
import json
import os

import numpy as np
from absl.testing import absltest

from data_pipelines import batching, corpus, lm_data


def _arrays(n=40):
  return {"x": np.arange(n)[:, None].repeat(3, 1), "y": np.arange(n)}


class BatchIteratorTest(absltest.TestCase):

  def test_each_epoch_is_a_permutation_and_seeded(self):
    it = batching.BatchIterator(_arrays(), 8, seed=7)
    epoch0 = np.concatenate([next(it)["y"] for _ in range(5)])
    self.assertCountEqual(epoch0.tolist(), list(range(40)))
    epoch1 = np.concatenate([next(it)["y"] for _ in range(5)])
    self.assertFalse(np.array_equal(epoch0, epoch1))
    again = batching.BatchIterator(_arrays(), 8, seed=7)
    np.testing.assert_array_equal(np.concatenate([next(again)["y"] for _ in range(5)]), epoch0)
    other = batching.BatchIterator(_arrays(), 8, seed=8)
    self.assertFalse(np.array_equal(np.concatenate([next(other)["y"] for _ in range(5)]), epoch0))

  def test_shards_partition_the_global_batch(self):
    full = batching.BatchIterator(_arrays(), 8, seed=1)
    shards = [batching.BatchIterator(_arrays(), 8, seed=1, shard_index=i, num_shards=4)
              for i in range(4)]
    for _ in range(7):
      want = next(full)["y"]
      got = np.concatenate([next(s)["y"] for s in shards])
      np.testing.assert_array_equal(got, want)

  def test_restored_state_continues_identically(self):
    it = batching.BatchIterator(_arrays(), 8, seed=2)
    for _ in range(7):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    rest = [next(it)["y"] for _ in range(6)]
    fresh = batching.BatchIterator(_arrays(), 8, seed=2)
    fresh.set_state(state)
    for want in rest:
      np.testing.assert_array_equal(next(fresh)["y"], want)
    with self.assertRaisesRegex(ValueError, "seed"):
      batching.BatchIterator(_arrays(), 8, seed=3).set_state(state)

  def test_bad_sizes_are_rejected(self):
    with self.assertRaisesRegex(ValueError, "not divisible"):
      batching.BatchIterator(_arrays(), 8, num_shards=3)
    with self.assertRaisesRegex(ValueError, "only 40 examples"):
      batching.BatchIterator(_arrays(), 64)


class SeqioPackingTest(absltest.TestCase):

  def test_packing_keeps_every_byte_and_skips_malformed_lines(self):
    tmp = self.create_tempdir().full_path
    docs = ["hello world", "a much longer document " * 6, "short"]
    paths = {}
    for split in ("train", "validation"):
      paths[split] = os.path.join(tmp, f"{split}.jsonl")
      with open(paths[split], "w") as f:
        for d in docs:
          f.write(json.dumps({"text": d}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"no_text": 1}) + "\n")
    vocab = lm_data.make_vocabulary("byte")
    name = lm_data.register_lm_task("test_packing_task", paths, vocab)
    with self.assertLogs(level="WARNING") as logs:
      arrays = lm_data.packed_arrays(name, "train", 32)
    self.assertTrue(any("skipped 2 malformed" in m for m in logs.output))
    self.assertEqual(set(arrays), {"inputs", "targets", "weights", "segment_ids", "positions"})
    seq = arrays["targets"]
    self.assertEqual(seq.shape[1], 32)
    # inputs are targets shifted right by one within each packed segment.
    same = arrays["segment_ids"][:, 1:] == arrays["segment_ids"][:, :-1]
    np.testing.assert_array_equal(arrays["inputs"][:, 1:][same], seq[:, :-1][same])
    # Every document's bytes are present (long ones split into chunks, not cut).
    eos = 1
    pieces = []
    for row, seg in zip(seq, arrays["segment_ids"]):
      for s in np.unique(seg[seg > 0]):
        ids = row[seg == s]
        pieces.append(vocab.decode([int(i) for i in ids if i != eos]))
    self.assertEqual("".join(sorted("".join(pieces))), "".join(sorted("".join(docs))))
    self.assertEqual(int(arrays["weights"].sum()), sum(len(d) for d in docs) + len(pieces))

  def test_missing_file_is_named(self):
    with self.assertRaisesRegex(FileNotFoundError, "nope.jsonl"):
      lm_data.register_lm_task("x_missing", {"train": "/tmp/nope.jsonl"},
                               lm_data.make_vocabulary("byte"))


class CorpusTest(absltest.TestCase):

  def test_pydoc_corpus_splits_are_disjoint_real_text(self):
    splits = corpus.pydoc_documents()
    train_ids = {d["id"].rsplit("/", 1)[0] for d in splits["train"]}
    valid_ids = {d["id"].rsplit("/", 1)[0] for d in splits["validation"]}
    self.assertEmpty(train_ids & valid_ids)
    self.assertGreater(sum(len(d["text"]) for d in splits["train"]), 200_000)
    entropy = corpus.unigram_entropy_nats([d["text"] for d in splits["train"]])
    self.assertBetween(entropy, 2.5, 4.5)


if __name__ == "__main__":
  absltest.main()
