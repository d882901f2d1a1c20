"""Trains a byte-level BPE vocabulary (a Hugging Face tokenizer.json) on a local
corpus, for `config.data.vocab=hf_tokenizer`.

  python -m tools.train_tokenizer --out=runs/bpe/tokenizer.json --vocab_size=2048 \
      [--input=train.jsonl --input=more.txt ...] [--validation=valid.jsonl]

Inputs are JSONL (the `text` field) or text files with one document per line,
read the way the LM task reads them. Without --input the corpus is the built-in
pydoc train split (written to --data_dir). Prints the vocabulary size, the
compression on the held-out text (--validation; by default the pydoc
validation split when training on pydoc, else the training input):
bytes per token, and tokens relative to the byte vocabulary's one token per
UTF-8 byte, so that a loss in nats/token converts to nats/byte as
loss / (bytes per token). And the training time.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

from absl import app
from absl import flags

from data_pipelines import corpus
from data_pipelines import hf_vocabulary

_OUT = flags.DEFINE_string("out", None, "where to write tokenizer.json", required=True)
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 2048,
                                   "vocabulary size: special tokens + 256 bytes + merges")
_INPUT = flags.DEFINE_multi_string("input", [], "training files (.jsonl with `text`, or text "
                                   "lines); default: the pydoc train split")
_VALIDATION = flags.DEFINE_multi_string("validation", [], "held-out files for the compression "
                                        "figure; default: see the module docstring")
_MIN_FREQUENCY = flags.DEFINE_integer("min_frequency", 2, "least count of a pair to be merged")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/.cache/armillary/data",
                                "where the pydoc corpus is written")


def read_texts(path: str) -> list[str]:
  """The documents of one file, as `lm_data` reads them (JSONL `text` field,
  or one document per line)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input/--validation file not found: {path!r}")
  if path.endswith(".jsonl"):
    return corpus.read_jsonl_texts(path)
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  return lines[:-1] if lines and not lines[-1] else lines


def compression(vocab: hf_vocabulary.HfTokenizerVocabulary, texts: Sequence[str]) -> dict:
  """UTF-8 bytes and tokens of `texts`; bytes/token = tokens of the byte
  vocabulary / tokens of this one."""
  num_bytes = sum(len(t.encode("utf-8")) for t in texts)
  num_tokens = sum(len(e.ids) for e in vocab.tokenizer.encode_batch(
      list(texts), add_special_tokens=False))
  return {"bytes": num_bytes, "tokens": num_tokens,
          "bytes_per_token": num_bytes / max(num_tokens, 1),
          "tokens_per_byte": num_tokens / max(num_bytes, 1)}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _INPUT.value:
    train = [t for p in _INPUT.value for t in read_texts(p)]
    held_out_paths = _VALIDATION.value or _INPUT.value
  else:
    paths = corpus.build_pydoc_corpus(os.path.expanduser(_DATA_DIR.value))
    train = corpus.read_jsonl_texts(paths["train"])
    held_out_paths = _VALIDATION.value or [paths["validation"]]
  held_out = [t for p in held_out_paths for t in read_texts(p)]
  if not any(train):
    raise app.UsageError("the training corpus has no text")

  start = time.perf_counter()
  hf_vocabulary.train_byte_level_bpe(train, _VOCAB_SIZE.value, _OUT.value,
                                     min_frequency=_MIN_FREQUENCY.value)
  seconds = time.perf_counter() - start
  vocab = hf_vocabulary.HfTokenizerVocabulary(_OUT.value)
  c = compression(vocab, held_out)
  train_bytes = sum(len(t.encode("utf-8")) for t in train)
  print(f"wrote {_OUT.value} (sha256 {vocab.digest[:16]})")
  print(f"vocab size: {vocab.vocab_size} (asked {_VOCAB_SIZE.value}; pad/eos/unk ids "
        f"{vocab.pad_id}/{vocab.eos_id}/{vocab.unk_id})")
  print(f"trained on {len(train)} documents, {train_bytes} bytes in {seconds:.2f} s")
  print(f"held out ({', '.join(held_out_paths)}): {c['bytes']} bytes -> {c['tokens']} tokens: "
        f"{c['bytes_per_token']:.3f} bytes/token, {c['tokens_per_byte']:.3f} tokens per "
        "byte-vocabulary token")


if __name__ == "__main__":
  app.run(main)
