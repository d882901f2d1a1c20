"""Hugging Face tokenizer.json vocabularies: exact byte-level round trips, ids
that match the `tokenizers` library and the GPT-2 byte table, special ids,
deterministic training, the seqio packing path, cache keys and config checks."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tokenizers
from absl.testing import absltest

from data_pipelines import hf_vocabulary, lm_data
from experiments import lm
from experiments.configs import lm_quickstart
from framework import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x + 1  # a comment",
    "Naïve café owners serve crème brûlée; the façade is déjà vu.",
    "日本語のテキストも扱えます。東京は日本の首都です。",
    "Emoji 🙂🙃 and math: ∑ x_i ≥ 0, α + β = γ.",
    "the the the there then these those their theory",
] * 4

HARD = [
    "",
    " leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp",
    "naïve café — 日本語 🙂 (ZWJ: 👩‍💻) e\u0301 combining",
    "unseen script: Ελληνικά, עברית, हिन्दी, 한국어",
    "literal specials </s> <pad> <unk> stay text",
]


def _bytes_to_unicode() -> dict[int, str]:
  """The GPT-2 table ByteLevel uses: printable bytes map to themselves, the
  rest to U+0100 upward, in byte order (written here from its definition)."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _write_jsonl(path, texts):
  with open(path, "w", encoding="utf-8") as f:
    for t in texts:
      f.write(json.dumps({"text": t}) + "\n")
  return path


class HfVocabularyTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = absltest.get_default_test_tmpdir()
    cls.path = hf_vocabulary.train_byte_level_bpe(
        CORPUS, 320, os.path.join(cls.dir, "bpe", "tokenizer.json"))
    cls.vocab = hf_vocabulary.HfTokenizerVocabulary(cls.path)

  def test_round_trip_is_exact_for_any_utf8(self):
    for text in HARD + CORPUS[:6]:
      ids = self.vocab.encode(text)
      self.assertEqual(self.vocab.decode(ids), text)
      self.assertNotIn(self.vocab.eos_id, ids)
      self.assertNotIn(self.vocab.pad_id, ids)
      tf_ids = self.vocab.encode_tf(tf.constant(text))
      self.assertEqual(tf_ids.dtype, tf.int32)
      self.assertEqual(tf_ids.numpy().tolist(), list(ids))
      self.assertEqual(self.vocab.decode_tf(tf_ids).numpy().decode("utf-8"), text)
    # Merges learned from the corpus do compress it.
    text = CORPUS[0]
    self.assertLess(len(self.vocab.encode(text)), len(text.encode("utf-8")))

  def test_ids_match_tokenizers_and_the_byte_table(self):
    reference = tokenizers.Tokenizer.from_file(self.path)
    inverse = {c: b for b, c in _bytes_to_unicode().items()}
    for text in HARD[:5] + CORPUS[:6]:
      ids = list(self.vocab.encode(text))
      self.assertEqual(ids, reference.encode(text, add_special_tokens=False).ids)
      # Each token spells bytes in the GPT-2 table; together, the text's UTF-8.
      spelled = bytes(inverse[c] for i in ids for c in reference.id_to_token(i))
      self.assertEqual(spelled, text.encode("utf-8"))

  def test_special_ids_and_sizes(self):
    v = self.vocab
    self.assertEqual((v.pad_id, v.eos_id, v.unk_id, v.bos_id), (0, 1, 2, None))
    self.assertEqual(v.extra_ids, 0)
    self.assertEqual(v.vocab_size, 320)
    self.assertEqual(v.vocab_size, tokenizers.Tokenizer.from_file(self.path).get_vocab_size())
    # seqio's decode stops at EOS and drops pad; out-of-range ids become unk.
    hello = list(v.encode("hello"))
    self.assertEqual(v.decode(hello + [v.eos_id] + list(v.encode(" tail"))), "hello")
    self.assertEqual(v.decode([0, 0] + hello), "hello")
    self.assertEqual(v.decode(hello + [10_000]), "hello")

  def test_other_special_names(self):
    gpt_style = hf_vocabulary.train_byte_level_bpe(
        CORPUS, 300, os.path.join(self.create_tempdir().full_path, "t.json"),
        special_tokens=("<pad>", "<|endoftext|>"))
    v = hf_vocabulary.HfTokenizerVocabulary(gpt_style)
    self.assertEqual((v.pad_id, v.eos_id, v.unk_id), (0, 1, None))
    named = hf_vocabulary.train_byte_level_bpe(
        CORPUS, 300, os.path.join(self.create_tempdir().full_path, "t.json"),
        special_tokens=("[P]", "<unk>", "[END]"))
    v = hf_vocabulary.HfTokenizerVocabulary(named, pad_token="[P]", eos_token="[END]")
    self.assertEqual((v.pad_id, v.eos_id, v.unk_id), (0, 2, 1))

  def test_bad_files_are_named(self):
    d = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, r"config\.data\.vocab_path='/nope\.json'"):
      hf_vocabulary.HfTokenizerVocabulary("/nope.json")
    garbage = os.path.join(d, "garbage.json")
    with open(garbage, "w") as f:
      f.write('{"not": "a tokenizer"}')
    with self.assertRaisesRegex(ValueError, r"config\.data\.vocab_path=.*garbage\.json.*not a "
                                r"Hugging Face tokenizer"):
      hf_vocabulary.HfTokenizerVocabulary(garbage)
    no_eos = hf_vocabulary.train_byte_level_bpe(CORPUS, 300, os.path.join(d, "a.json"),
                                                special_tokens=("<pad>", "<unk>"))
    with self.assertRaisesRegex(ValueError, r"vocab_path=.*end-of-sequence"):
      hf_vocabulary.HfTokenizerVocabulary(no_eos)
    pad_not_zero = hf_vocabulary.train_byte_level_bpe(CORPUS, 300, os.path.join(d, "b.json"),
                                                      special_tokens=("</s>", "<pad>"))
    with self.assertRaisesRegex(ValueError, r"pad token has id 1"):
      hf_vocabulary.HfTokenizerVocabulary(pad_not_zero)
    with self.assertRaisesRegex(ValueError, r"vocab_size=200 must be >= 259"):
      hf_vocabulary.train_byte_level_bpe(CORPUS, 200, os.path.join(d, "c.json"))
    self.assertFalse(os.path.exists(os.path.join(d, "c.json")))

  def test_tf_shapes(self):
    texts = ["hello world", "", "naïve 🙂"]
    ragged = self.vocab.encode_tf(tf.constant(texts))
    self.assertIsInstance(ragged, tf.RaggedTensor)
    self.assertEqual(ragged.to_list(), [list(self.vocab.encode(t)) for t in texts])
    ds = tf.data.Dataset.from_tensor_slices(texts).map(self.vocab.encode_tf)
    self.assertEqual(ds.element_spec.shape.as_list(), [None])
    self.assertEqual([x.tolist() for x in ds.as_numpy_iterator()],
                     [list(self.vocab.encode(t)) for t in texts])
    padded = ragged.to_tensor(default_value=0)
    decoded = self.vocab.decode_tf(padded)
    self.assertEqual(decoded.shape.as_list(), [3])
    self.assertEqual([s.decode("utf-8") for s in decoded.numpy()], texts)
    graph_decode = tf.function(self.vocab.decode_tf,
                               input_signature=[tf.TensorSpec([None, None], tf.int32)])
    self.assertEqual(graph_decode.get_concrete_function().structured_outputs.shape.as_list(),
                     [None])

  def test_training_is_deterministic_across_processes(self):
    d = self.create_tempdir().full_path
    corpus_file = _write_jsonl(os.path.join(d, "corpus.jsonl"), CORPUS)
    held_out = _write_jsonl(os.path.join(d, "held_out.jsonl"), HARD[1:])
    first = hf_vocabulary.train_byte_level_bpe(CORPUS, 320, os.path.join(d, "first.json"))
    again = hf_vocabulary.train_byte_level_bpe(CORPUS, 320, os.path.join(d, "again.json"))
    cli_out = os.path.join(d, "cli", "tokenizer.json")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.train_tokenizer", f"--out={cli_out}", "--vocab_size=320",
         f"--input={corpus_file}", f"--validation={held_out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    with open(first, "rb") as a, open(again, "rb") as b, open(cli_out, "rb") as c:
      want = a.read()
      self.assertEqual(b.read(), want)
      self.assertEqual(c.read(), want)
    self.assertIn("vocab size: 320", proc.stdout)
    held_bytes = sum(len(t.encode("utf-8")) for t in HARD[1:])
    held_tokens = sum(len(self.vocab.encode(t)) for t in HARD[1:])
    self.assertIn(f"{held_bytes} bytes -> {held_tokens} tokens: "
                  f"{held_bytes / held_tokens:.3f} bytes/token", proc.stdout)
    self.assertEqual([f for f in os.listdir(d) if f.endswith(".tmp")], [])

  def test_packed_targets_decode_to_the_documents(self):
    d = self.create_tempdir().full_path
    docs = CORPUS[:6] + HARD[1:] + ["a long document that spans chunks " * 6]
    paths = {s: _write_jsonl(os.path.join(d, f"{s}.jsonl"), docs) for s in ("train", "validation")}
    name = lm_data.register_lm_task("test_hf_vocab_packing", paths, self.vocab)
    arrays = lm_data.packed_arrays(name, "train", 48)
    seq, seg = arrays["targets"], arrays["segment_ids"]
    self.assertEqual(seq.shape[1], 48)
    self.assertLess(int(seq.max()), self.vocab.vocab_size)
    segments = [row[s == k].tolist() for row, s in zip(seq, seg) for k in np.unique(s[s > 0])]
    eos = self.vocab.eos_id
    for ids in segments:
      self.assertEqual(ids.count(eos), 1)
      self.assertEqual(ids[-1], eos)
    # Every token of every document is packed, long ones split into chunks.
    packed = collections.Counter(i for ids in segments for i in ids[:-1])
    want = collections.Counter(i for t in docs for i in self.vocab.encode(t))
    self.assertEqual(packed, want)
    decoded = {self.vocab.decode(ids) for ids in segments}
    short = [t for t in docs if len(self.vocab.encode(t)) < 48]
    self.assertGreater(len(short), 8)
    for doc in short:   # one segment each, decoded exactly
      self.assertIn(doc, decoded)
    self.assertGreater(len(segments), len(short) + 1)   # the long ones were chunked
    self.assertEqual(int(arrays["weights"].sum()), sum(want.values()) + len(segments))
    same = seg[:, 1:] == seg[:, :-1]
    np.testing.assert_array_equal(arrays["inputs"][:, 1:][same], seq[:, :-1][same])

  def test_retrained_file_is_a_new_identity_and_cache_key(self):
    d = self.create_tempdir().full_path
    path = os.path.join(d, "tokenizer.json")
    hf_vocabulary.train_byte_level_bpe(CORPUS, 300, path)
    old = lm_data.make_vocabulary("hf_tokenizer", path)
    self.assertEqual(old, hf_vocabulary.HfTokenizerVocabulary(path))
    paths = {s: _write_jsonl(os.path.join(d, f"{s}.jsonl"), CORPUS[:6]) for s in
             ("train", "validation")}
    name = lm_data.register_lm_task("test_hf_vocab_cache", paths, old)
    old_key = lm_data.cache_key(name, "train", 32)
    cache = os.path.join(d, "cache")
    old_arrays = lm_data.packed_arrays(name, "train", 32, cache)

    hf_vocabulary.train_byte_level_bpe(["zzz qqq zzz qqq"] * 20 + CORPUS[3:4], 300, path)
    new = lm_data.make_vocabulary("hf_tokenizer", path)
    self.assertNotEqual(lm_data.vocabulary_identity(new), lm_data.vocabulary_identity(old))
    self.assertTrue(lm_data.vocabulary_identity(new).startswith("hf_tokenizer+0:"))
    lm_data.register_lm_task(name, paths, new)
    self.assertNotEqual(lm_data.cache_key(name, "train", 32), old_key)
    new_arrays = lm_data.packed_arrays(name, "train", 32, cache)
    self.assertEqual(len(os.listdir(cache)), 2)
    self.assertFalse(new_arrays["targets"].shape == old_arrays["targets"].shape
                     and np.array_equal(new_arrays["targets"], old_arrays["targets"]))
    want = collections.Counter(i for t in CORPUS[:6] for i in new.encode(t))
    got = collections.Counter(new_arrays["targets"][new_arrays["targets"] > 1].tolist())
    self.assertEqual(got, want)

  def test_validate_names_the_field(self):
    config = lm_quickstart.get_config()
    config.data.vocab = "hf_tokenizer"
    config.data.vocab_path = "/nonexistent/tokenizer.json"
    with self.assertRaisesRegex(config_lib.ConfigError,
                                r"config\.data\.vocab_path: file not found"):
      lm.validate(config)
    garbage = os.path.join(self.create_tempdir().full_path, "garbage.json")
    with open(garbage, "w") as f:
      f.write("not json")
    config.data.vocab_path = garbage
    with self.assertRaisesRegex(config_lib.ConfigError, r"config\.data\.vocab_path=.*not a"):
      lm.validate(config)
    config.data.vocab_path = self.path
    config.model.vocab_size = 256
    with self.assertRaisesRegex(config_lib.ConfigError,
                                r"config\.model\.vocab_size: 256 is smaller than the "
                                r"hf_tokenizer vocabulary's 320 ids"):
      lm.validate(config)
    config.model.vocab_size = 320
    self.assertIn("data", lm.validate(config))
    byte = lm_quickstart.get_config()
    byte.model.vocab_size = 128
    with self.assertRaisesRegex(config_lib.ConfigError, r"model\.vocab_size: 128 .* 259 ids"):
      lm.validate(byte)


if __name__ == "__main__":
  absltest.main()
