"""The language-model input path through seqio.

  JSONL/text files -> seqio Task (tokenize, split long documents into chunks,
  append EOS) -> DecoderFeatureConverter (packing to fixed length, segment ids,
  positions) -> numpy arrays cached once per (task, split, length) ->
  `BatchIterator` (deterministic shuffling by seed and shard, resumable).

Packed arrays use the framework's batch keys: inputs, targets, weights,
segment_ids, positions.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Mapping

import numpy as np

from data_pipelines import corpus

_SEQIO_TO_BATCH = {
    "decoder_input_tokens": "inputs",
    "decoder_target_tokens": "targets",
    "decoder_loss_weights": "weights",
    "decoder_segment_ids": "segment_ids",
    "decoder_positions": "positions",
}


def _tf():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators JAX owns
  return tf


def make_vocabulary(kind: str = "byte", path: str = ""):
  """`byte` (UTF-8 bytes + pad/eos/unk, 259 ids) or `sentencepiece` (model file)."""
  import seqio  # pylint: disable=g-import-not-at-top
  if kind == "byte":
    return seqio.ByteVocabulary()
  if kind == "sentencepiece":
    if not path or not os.path.exists(path):
      raise FileNotFoundError(f"config.data.vocab_path={path!r}: SentencePiece model not found")
    return seqio.SentencePieceVocabulary(path)
  raise ValueError(f"config.data.vocab={kind!r} must be 'byte' or 'sentencepiece'")


def chunk_targets(dataset, sequence_length: Mapping[str, int]):
  """Splits each document's tokens into chunks of length L - 1 (room for EOS)
  instead of truncating, so no text is thrown away."""
  tf = _tf()
  size = int(sequence_length["targets"]) - 1

  def split(ex):
    chunks = tf.data.Dataset.from_tensor_slices(ex["targets"]).batch(size)
    return chunks.map(lambda c: {"targets": c})

  return dataset.flat_map(split)


def _jsonl_dataset_fn(paths: Mapping[str, str]):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
    del shuffle_files, seed  # shuffling happens at batching, by seed and shard
    tf = _tf()
    path = paths[split]
    if path.endswith(".jsonl"):
      texts = corpus.read_jsonl_texts(path)
      return tf.data.Dataset.from_tensor_slices({"targets": tf.constant(texts, tf.string)})
    return tf.data.TextLineDataset(path).map(lambda t: {"targets": t})
  return dataset_fn


def register_lm_task(name: str, paths: Mapping[str, str], vocabulary) -> str:
  """Registers (once) a seqio Task reading JSONL (`text` field) or text lines."""
  import seqio  # pylint: disable=g-import-not-at-top
  for split, path in paths.items():
    if not os.path.exists(path):
      raise FileNotFoundError(f"data file for split {split!r} not found: {path}")
  if name in seqio.TaskRegistry.names():
    return name
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_jsonl_dataset_fn(dict(paths)), splits=list(paths)),
      preprocessors=[seqio.preprocessors.tokenize, chunk_targets,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=True)},
  )
  return name


def packed_arrays(task_name: str, split: str, seq_len: int, cache_dir: str = "") -> dict[str, np.ndarray]:
  """Runs the seqio task with packing and returns int32 arrays [N, seq_len].

  Cached as .npz in `cache_dir` (keyed by task, split, length) when given.
  """
  key = hashlib.sha1(f"{task_name}|{split}|{seq_len}".encode()).hexdigest()[:12]
  path = os.path.join(cache_dir, f"{task_name}.{split}.{seq_len}.{key}.npz") if cache_dir else ""
  if path and os.path.exists(path):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  import seqio  # pylint: disable=g-import-not-at-top
  _tf()
  task = seqio.get_mixture_or_task(task_name)
  lengths = {"targets": seq_len}
  ds = task.get_dataset(lengths, split=split, shuffle=False, use_cached=False, seed=0)
  ds = seqio.DecoderFeatureConverter(pack=True)(ds, lengths)
  rows: dict[str, list[np.ndarray]] = {v: [] for v in _SEQIO_TO_BATCH.values()}
  for ex in ds.as_numpy_iterator():
    for seqio_key, key_ in _SEQIO_TO_BATCH.items():
      rows[key_].append(ex[seqio_key])
  arrays = {k: np.stack(v).astype(np.int32) for k, v in rows.items()}
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  logging.info("packed %s/%s: %d sequences of %d tokens", task_name, split,
               len(arrays["inputs"]), seq_len)
  return arrays


def lm_arrays_from_config(data: Any) -> dict[str, dict[str, np.ndarray]]:
  """Builds the train/validation packed arrays described by `config.data`.

  config.data.source: "pydoc" (built-in corpus written to data_dir) or "files"
  (train_path / validation_path to JSONL with a `text` field or text lines).
  """
  data_dir = os.path.expanduser(data.data_dir)
  if data.source == "pydoc":
    paths = corpus.build_pydoc_corpus(data_dir)
  elif data.source == "files":
    paths = {"train": data.train_path, "validation": data.validation_path}
  else:
    raise ValueError(f"config.data.source={data.source!r} must be 'pydoc' or 'files'")
  vocab = make_vocabulary(data.vocab, data.get("vocab_path", ""))
  name = data.get("task_name") or f"armillary_{data.source}_{hashlib.sha1(repr(sorted(paths.items())).encode()).hexdigest()[:8]}"
  register_lm_task(name, paths, vocab)
  return {split: packed_arrays(name, split, int(data.seq_len), os.path.join(data_dir, "packed"))
          for split in paths}
