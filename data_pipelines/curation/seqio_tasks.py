"""seqio Tasks and Mixtures over curated shards.

A task reads the `text` of curated JSONL.zst shards and runs the same
preprocessing as data_pipelines.lm_data (tokenize, split long documents into
chunks of L - 1 tokens, append EOS); packing (`lm_data.pack_with_loss_mask`) then
yields the framework's batch keys (inputs, targets, weights, segment_ids,
positions). Documents go to "validation" when hash(id) mod 1e6 falls below
validation_fraction 1e6, else to "train".
"""
from __future__ import annotations

import glob
import hashlib
from typing import Mapping, Sequence, Union

import numpy as np

from data_pipelines import lm_data
from data_pipelines.curation import io as cio


def _files(paths: Union[str, Sequence[str]]) -> list[str]:
  if isinstance(paths, str):
    paths = [paths]
  files = sorted({p for pat in paths for p in glob.glob(pat)})
  return [p for p in files if not p.endswith(".attrs.jsonl.zst")]


def in_validation(doc_id: str, fraction: float) -> bool:
  h = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % 1_000_000
  return h < fraction * 1_000_000


def iter_texts(files: Sequence[str], split: str, validation_fraction: float):
  for path in files:
    for row in cio.read_rows(path):
      if (split == "validation") == in_validation(str(row.get("id", "")), validation_fraction):
        yield row["text"]


def curated_shards(workdir: str) -> list[str]:
  """The document shards of a curation run's work directory (its `output/`)."""
  return cio.output_shards(workdir)


def register_curated_task(name: str, paths: Union[str, Sequence[str]], vocabulary=None,
                          validation_fraction: float = 0.0) -> str:
  """Registers a seqio Task over curated shards (globs allowed); a name
  registered before over other shards, vocabulary or fraction is replaced
  (see `lm_data.register_text_task`)."""
  files = _files(paths)
  if not files:
    raise FileNotFoundError(f"no curated shards match {paths!r}")
  vocabulary = vocabulary or lm_data.make_vocabulary("byte")
  splits = ["train", "validation"] if validation_fraction > 0 else ["train"]

  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    tf = lm_data._tf()  # pylint: disable=protected-access
    return tf.data.Dataset.from_generator(
        lambda: iter_texts(files, split, validation_fraction),
        output_signature=tf.TensorSpec((), tf.string)).map(lambda t: {"targets": t})

  # The fraction decides what each split holds, so it is part of the task's inputs.
  return lm_data.register_text_task(name, dataset_fn, splits, vocabulary, files,
                                    params=f"validation_fraction={float(validation_fraction)!r}")


def register_curated_mixture(name: str, rates: Mapping[str, float]) -> str:
  """A seqio Mixture of registered tasks with the given sampling rates."""
  import seqio  # pylint: disable=g-import-not-at-top
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, [(t, float(r)) for t, r in sorted(rates.items())])
  return name


def packed_task_arrays(task: str, split: str, seq_len: int, cache_dir: str = "") -> dict[str, np.ndarray]:
  """Packed int32 arrays of a task, through lm_data's path (and its cache)."""
  return lm_data.packed_arrays(task, split, seq_len, cache_dir)


def packed_mixture_arrays(mixture: str, split: str, seq_len: int, num_sequences: int,
                          seed: int = 0) -> dict[str, np.ndarray]:
  """`num_sequences` packed sequences sampled from a mixture at its rates (the
  tasks repeat, so a mixture is read to a fixed number of sequences)."""
  import seqio  # pylint: disable=g-import-not-at-top
  lm_data._tf()  # pylint: disable=protected-access
  lengths = {"targets": seq_len}
  ds = seqio.get_mixture_or_task(mixture).get_dataset(
      lengths, split=split, shuffle=False, use_cached=False, seed=seed, num_epochs=None,
      log_mixing_proportions=False)
  ds = lm_data.pack_with_loss_mask(ds, seq_len).take(num_sequences)
  rows = {k: [] for k in lm_data.BATCH_KEYS}
  for ex in ds.as_numpy_iterator():
    for k in lm_data.BATCH_KEYS:
      rows[k].append(ex[k])
  return {k: np.stack(v).astype(np.int32) for k, v in rows.items()}
