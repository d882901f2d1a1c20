"""Where an LM run's documents come from: `config.data.source` -> a seqio task
-> packed train/validation arrays, and the training texts behind them.

  pydoc    the built-in corpus (Python's reference topics) written to
           data.data_dir; its own train/validation split.
  files    data.train_path / data.validation_path: JSONL with a `text` field
           (or `prompt` and `completion`: loss on the completion only), or
           text with one document per line.
  curated  data.curated_dir: the work directory of a curation run
           (`python -m data_pipelines.curate`); its `output/*.jsonl.zst`
           shards become the task of `curation.seqio_tasks`. A document goes
           to validation when the hash of its id falls in the first
           data.curated_validation_fraction of the hash range, else to
           train: a deterministic split that keeps a document's chunks
           together and does not move when shards are added.

This module sits above `lm_data` (the seqio/packing mechanics) and
`curation.seqio_tasks` (the curated-shard task); neither imports it.
"""
from __future__ import annotations

import collections
import hashlib
import math
import os
from typing import Any, Optional

import numpy as np

from data_pipelines import corpus
from data_pipelines import lm_data
from data_pipelines.curation import seqio_tasks

SOURCES = ("pydoc", "files", "curated")


def curated_shards(curated_dir: str) -> list[str]:
  """The curated shards under `curated_dir`; an error naming
  config.data.curated_dir when the directory or its shards are missing."""
  if not curated_dir or not os.path.isdir(curated_dir):
    raise FileNotFoundError(f"config.data.curated_dir={curated_dir!r}: directory not found "
                            "(the --workdir of a `python -m data_pipelines.curate` run)")
  files = seqio_tasks.curated_shards(curated_dir)
  if not files:
    raise FileNotFoundError(f"config.data.curated_dir={curated_dir!r}: no curated shards "
                            f"{os.path.join(curated_dir, 'output', '*.jsonl.zst')} (has the "
                            "curation run finished?)")
  return files


def _digest(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()[:8]


def register_task(data: Any) -> tuple[str, list[str]]:
  """Registers the seqio task `config.data` describes; returns (name, splits)."""
  vocab = lm_data.make_vocabulary(data.vocab, data.get("vocab_path", ""))
  if data.source == "pydoc":
    paths = corpus.build_pydoc_corpus(os.path.expanduser(data.data_dir))
  elif data.source == "files":
    paths = {"train": data.train_path, "validation": data.validation_path}
  elif data.source == "curated":
    files = curated_shards(data.curated_dir)
    fraction = float(data.curated_validation_fraction)
    name = data.get("task_name") or (
        f"armillary_curated_{_digest(os.path.abspath(data.curated_dir))}")
    seqio_tasks.register_curated_task(name, files, vocab, validation_fraction=fraction)
    return name, ["train", "validation"]
  else:
    raise ValueError(f"config.data.source={data.source!r} must be one of {', '.join(SOURCES)}")
  name = data.get("task_name") or f"armillary_{data.source}_{_digest(repr(sorted(paths.items())))}"
  lm_data.register_lm_task(name, paths, vocab)
  return name, list(paths)


def arrays_from_config(data: Any) -> dict[str, dict[str, np.ndarray]]:
  """The packed train/validation arrays described by `config.data` (cached
  under data.data_dir/packed, keyed on vocabulary and input bytes)."""
  name, splits = register_task(data)
  cache = os.path.join(os.path.expanduser(data.data_dir), "packed")
  return {split: lm_data.packed_arrays(name, split, int(data.seq_len), cache) for split in splits}


def train_texts(data: Any) -> list[str]:
  """The documents of the training split, as the task reads them."""
  if data.source == "pydoc":
    return corpus.read_jsonl_texts(corpus.build_pydoc_corpus(
        os.path.expanduser(data.data_dir))["train"])
  if data.source == "files":
    if data.train_path.endswith(".jsonl"):
      return [p + c for p, c in corpus.read_jsonl_documents(data.train_path)]
    with open(data.train_path, encoding="utf-8") as f:
      lines = f.read().split("\n")   # as tf.data.TextLineDataset reads it
    return lines[:-1] if lines and not lines[-1] else lines
  if data.source == "curated":
    return list(seqio_tasks.iter_texts(curated_shards(data.curated_dir), "train",
                                       float(data.curated_validation_fraction)))
  raise ValueError(f"config.data.source={data.source!r} must be one of {', '.join(SOURCES)}")


def unigram_entropy(data: Any) -> Optional[tuple[float, str]]:
  """(entropy, unit) of the unigram distribution of the training text in the
  model's units: nats per byte for the byte vocabulary (the same number as
  `corpus.unigram_entropy_nats`), nats per token of the vocabulary otherwise.
  A model that beats it has learned more than symbol frequencies. None when
  there is no training text to measure."""
  texts = [t for t in train_texts(data) if t]
  if not texts:
    return None
  if data.vocab == "byte":
    return corpus.unigram_entropy_nats(texts), "byte"
  vocab = lm_data.make_vocabulary(data.vocab, data.get("vocab_path", ""))
  counts = collections.Counter(i for t in texts for i in vocab.encode(t))
  total = sum(counts.values())
  if not total:
    return None
  return -sum(c / total * math.log(c / total) for c in counts.values()), "token"
