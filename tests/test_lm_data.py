"""The LM input path: seqio task + packing, deterministic resumable batching,
and a packing cache that never serves stale token ids."""
import json
import os

import numpy as np
from absl.testing import absltest

from data_pipelines import batching, corpus, lm_data, lm_sources
from experiments.configs import lm_quickstart


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

  def test_state_names_its_stream_and_refuses_another(self):
    it = batching.BatchIterator(_arrays(), 8, seed=2, shard_index=1, num_shards=2)
    next(it)
    state = json.loads(json.dumps(it.get_state()))
    self.assertEqual(state, {"epoch": 0, "batch": 1, "seed": 2, "global_batch_size": 8,
                             "num_shards": 2})
    # Same (epoch, batch), other examples: another batch size.
    with self.assertRaisesRegex(ValueError, r"global_batch_size 8 \(now 4\)"):
      batching.BatchIterator(_arrays(), 4, seed=2, shard_index=1, num_shards=2).set_state(state)
    same = batching.BatchIterator(_arrays(), 8, seed=2, shard_index=1, num_shards=2)
    same.set_state(state)
    expected = next(it)["y"]
    np.testing.assert_array_equal(next(same)["y"], expected)
    # Another shard count is the same global batch split over other hosts
    # (a run resumed on another number of processes): shards 2, 3 of 4 are
    # the rows of shard 1 of 2.
    quarters = []
    for index in (2, 3):
      other = batching.BatchIterator(_arrays(), 8, seed=2, shard_index=index, num_shards=4)
      other.set_state(state)
      quarters.append(next(other)["y"])
    np.testing.assert_array_equal(np.concatenate(quarters), expected)

  def test_state_of_older_checkpoints_still_loads(self):
    it = batching.BatchIterator(_arrays(), 8, seed=5)
    for _ in range(3):
      next(it)
    want = next(it)["y"]
    old = {"epoch": 0, "batch": 3, "seed": 5}   # saved before batch size and shards were recorded
    fresh = batching.BatchIterator(_arrays(), 8, seed=5)
    fresh.set_state(old)
    np.testing.assert_array_equal(next(fresh)["y"], want)
    with self.assertRaisesRegex(ValueError, "seed"):
      batching.BatchIterator(_arrays(), 8, seed=6).set_state(old)

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

  def test_text_packing_equals_seqio_decoder_feature_converter(self):
    import seqio  # pylint: disable=g-import-not-at-top
    tmp = self.create_tempdir().full_path
    path = os.path.join(tmp, "train.jsonl")
    with open(path, "w") as f:
      for i in range(12):
        f.write(json.dumps({"text": f"document {i} " + "words " * (i * 3)}) + "\n")
    name = lm_data.register_lm_task("test_pack_vs_seqio", {"train": path},
                                    lm_data.make_vocabulary("byte"))
    arrays = lm_data.packed_arrays(name, "train", 24)
    ds = seqio.get_mixture_or_task(name).get_dataset({"targets": 24}, split="train",
                                                       shuffle=False, use_cached=False, seed=0)
    ref = list(seqio.DecoderFeatureConverter(pack=True)(ds, {"targets": 24}).as_numpy_iterator())
    for ours, theirs in (("inputs", "decoder_input_tokens"), ("targets", "decoder_target_tokens"),
                         ("weights", "decoder_loss_weights"),
                         ("segment_ids", "decoder_segment_ids"),
                         ("positions", "decoder_positions")):
      np.testing.assert_array_equal(arrays[ours], np.stack([r[theirs] for r in ref]), ours)

  def test_prompt_completion_records_train_on_the_completion_only(self):
    tmp = self.create_tempdir().full_path
    path = os.path.join(tmp, "train.jsonl")
    records = [{"prompt": "Q: 2+2?\nA: ", "completion": "4"},
               {"text": "plain text, all of it trained on"},
               {"prompt": "P" * 40, "completion": "C" * 30},   # chunked at 15 tokens
               {"prompt": "", "completion": "no prompt"},
               {"prompt": "bad", "completion": 3}]            # malformed: skipped
    with open(path, "w") as f:
      for r in records:
        f.write(json.dumps(r) + "\n")
    vocab = lm_data.make_vocabulary("byte")
    name = lm_data.register_lm_task("test_prompt_mask", {"train": path}, vocab)
    with self.assertLogs(level="WARNING") as logs:
      arrays = lm_data.packed_arrays(name, "train", 16)
    self.assertTrue(any("skipped 1 malformed" in m and "line 5" in m for m in logs.output))
    targets, weights = arrays["targets"], arrays["weights"]
    trained = bytes(int(t) - 3 for t, w in zip(targets.ravel(), weights.ravel())
                    if w and t > 2).decode()
    untrained = bytes(int(t) - 3 for t, w in zip(targets.ravel(), weights.ravel())
                      if not w and t > 2).decode()
    self.assertEqual(sorted(trained), sorted("4" + "plain text, all of it trained on"
                                             + "C" * 30 + "no prompt"))
    self.assertEqual(sorted(untrained), sorted("Q: 2+2?\nA: " + "P" * 40))
    # Every chunk's EOS is trained on, prompt-only chunks included.
    eos = (targets == 1)
    self.assertTrue(np.all(weights[eos] == 1))
    self.assertEqual(int(weights.sum()), len(trained) + int(eos.sum()))
    # The training texts are prompt + completion.
    data = lm_quickstart.get_config().data
    data.source, data.train_path = "files", path
    self.assertEqual(lm_sources.train_texts(data)[0], "Q: 2+2?\nA: 4")

  def test_missing_file_is_named(self):
    with self.assertRaisesRegex(FileNotFoundError, "nope.jsonl"):
      lm_data.register_lm_task("x_missing", {"train": "/tmp/nope.jsonl"},
                               lm_data.make_vocabulary("byte"))


def _byte_texts(arrays):
  """The packed targets back to bytes (ByteVocabulary: id = byte + 3)."""
  return b"".join(bytes(int(i) - 3 for i in row if i > 2) for row in arrays["targets"])


def _train_sentencepiece(path_prefix, texts, vocab_size):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  with open(path_prefix + ".txt", "w") as f:
    f.write("\n".join(t.replace("\n", " ") for t in texts) + "\n")
  spm.SentencePieceTrainer.train(input=path_prefix + ".txt", model_prefix=path_prefix,
                                 vocab_size=vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 minloglevel=2)
  return path_prefix + ".model"


class PackingCacheTest(absltest.TestCase):
  """The packed-array cache is keyed on the vocabulary and the input bytes."""

  def setUp(self):
    super().setUp()
    tmp = self.create_tempdir().full_path
    self.texts = [d["text"] for d in corpus.pydoc_documents()["train"][:120]]
    self.data = lm_quickstart.get_config().data
    self.data.update(dict(source="files", data_dir=os.path.join(tmp, "cache"), seq_len=64))
    for split, docs in (("train", self.texts[:100]), ("validation", self.texts[100:])):
      self.data[f"{split}_path"] = os.path.join(tmp, f"{split}.jsonl")
      corpus.write_jsonl(self.data[f"{split}_path"], [{"text": t} for t in docs])
    self.tmp = tmp

  def _uncached(self, name, vocab):
    lm_data.register_lm_task(name, {"train": self.data.train_path,
                                    "validation": self.data.validation_path}, vocab)
    return lm_data.packed_arrays(name, "train", int(self.data.seq_len))

  def test_changing_the_vocabulary_packs_anew(self):
    byte = lm_sources.arrays_from_config(self.data)["train"]
    self.assertTrue(self.texts[0].encode()[:60] in _byte_texts(byte), "first document not packed")
    model = _train_sentencepiece(os.path.join(self.tmp, "sp"), self.texts, 200)
    self.data.update(dict(vocab="sentencepiece", vocab_path=model))
    sp = lm_sources.arrays_from_config(self.data)["train"]
    want = self._uncached("cache_test_sp_reference", lm_data.make_vocabulary("sentencepiece", model))
    np.testing.assert_array_equal(sp["targets"], want["targets"])
    self.assertLess(len(sp["targets"]), len(byte["targets"]))   # pieces are longer than bytes
    # Back to bytes: the first cache entry is still right and is reused.
    self.data.update(dict(vocab="byte", vocab_path=""))
    np.testing.assert_array_equal(lm_sources.arrays_from_config(self.data)["train"]["targets"],
                                  byte["targets"])

  def test_vocabulary_identity_is_its_content(self):
    a = _train_sentencepiece(os.path.join(self.tmp, "a"), self.texts, 200)
    b = _train_sentencepiece(os.path.join(self.tmp, "b"), self.texts, 150)
    copy = os.path.join(self.tmp, "copy.model")
    with open(a, "rb") as src, open(copy, "wb") as dst:
      dst.write(src.read())
    ident = lambda p: lm_data.vocabulary_identity(lm_data.make_vocabulary("sentencepiece", p))
    self.assertStartsWith(ident(a), "sentencepiece")
    self.assertNotEqual(ident(a), ident(b))
    self.assertEqual(ident(a), ident(copy))
    self.assertNotEqual(ident(a), lm_data.vocabulary_identity(lm_data.make_vocabulary("byte")))

  def test_in_place_edit_of_same_size_and_mtime_packs_anew(self):
    first = lm_sources.arrays_from_config(self.data)["train"]
    path = self.data.train_path
    stat = os.stat(path)
    with open(path, encoding="utf-8") as f:
      content = f.read()
    word = next(w for w in ("the", "and", "of") if f" {w} " in content)
    edited = content.replace(f" {word} ", f" {word.upper()} ")
    self.assertEqual(len(edited), len(content))
    with open(path, "w", encoding="utf-8") as f:
      f.write(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # size and mtime as before
    self.assertEqual((os.stat(path).st_size, os.stat(path).st_mtime_ns),
                     (stat.st_size, stat.st_mtime_ns))
    second = lm_sources.arrays_from_config(self.data)["train"]
    marker = f" {word.upper()} ".encode()
    self.assertTrue(marker in _byte_texts(second), f"{marker!r} of the edit not packed")
    self.assertFalse(marker in _byte_texts(first))
    np.testing.assert_array_equal(
        second["targets"], self._uncached("cache_test_edit_reference",
                                          lm_data.make_vocabulary("byte"))["targets"])
    self.assertLen([f for f in os.listdir(os.path.join(self.data.data_dir, "packed"))
                    if ".train." in f], 2)


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
