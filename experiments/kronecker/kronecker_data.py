"""The Kronecker study's data: training arrays, held-out arrays, measurement draws.

config.data.name:
  digits         sklearn's 8x8 digits as 64-vectors (`data_pipelines.digits`),
                 batches {"x", "y"} for `models.mlp`;
  digits_images  the same as 8x8x1 images, for `models.cnn`;
  pydoc_bytes    the pydoc corpus (`data_pipelines.corpus`) as raw UTF-8 bytes:
                 training sequences are the consecutive windows of
                 `data.seq_len` bytes (inputs) and the next bytes (targets);
                 held out: `data.num_eval` windows at random offsets of the
                 validation text. Batches {"inputs", "targets", "weights"} for
                 `models.transformer`. An example is one sequence.

Training batches come from `data_pipelines.batching.BatchIterator` over the
training arrays (epochs of permutations, resumable). The measurements draw
their own examples i.i.d. with replacement from the same arrays
(`StudyData.sample`) with a generator of their own, so that the study settings
never change the training trajectory.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from data_pipelines import digits

NAMES = ("digits", "digits_images", "pydoc_bytes")


@dataclasses.dataclass
class StudyData:
  """train / held-out arrays (dicts of equal-length arrays) and their key names.

  input_key, label_key: the model's inputs and integer labels in a batch.
  """
  train: dict[str, np.ndarray]
  held_out: dict[str, np.ndarray]
  input_key: str
  label_key: str

  @property
  def num_train(self) -> int:
    return len(self.train[self.input_key])

  def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of n training examples drawn uniformly with replacement."""
    idx = rng.integers(0, self.num_train, size=n)
    return self.train[self.input_key][idx], self.train[self.label_key][idx]

  def held_out_batches(self, batch_size: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    n = len(self.held_out[self.input_key])
    for s in range(0, n, batch_size):
      yield {k: v[s:s + batch_size] for k, v in self.held_out.items()}


def _pydoc_bytes() -> tuple[np.ndarray, np.ndarray]:
  from data_pipelines import corpus  # pylint: disable=g-import-not-at-top
  docs = corpus.pydoc_documents()
  enc = lambda split: np.frombuffer("\n\n".join(d["text"] for d in docs[split]).encode("utf-8"),
                                    np.uint8)
  return enc("train"), enc("validation")


def _lm_example(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  w = stream[starts[:, None] + np.arange(seq_len + 1)[None]].astype(np.int32)
  return {"inputs": w[:, :-1], "targets": w[:, 1:],
          "weights": np.ones((len(starts), seq_len), np.float32)}


def build_data(data_config, seed: int) -> StudyData:
  """The arrays named by `data_config.name` (see the module docstring)."""
  name = data_config.name
  if name in ("digits", "digits_images"):
    split = digits.digits_split(seed, float(data_config.train_fraction),
                                image=name == "digits_images")
    return StudyData(split["train"], split["test"], "x", "y")
  if name == "pydoc_bytes":
    seq_len = int(data_config.seq_len)
    train, val = _pydoc_bytes()
    starts = np.arange(0, len(train) - seq_len - 1, seq_len)
    eval_starts = np.random.default_rng(seed + 1).integers(
        0, len(val) - seq_len - 1, size=int(data_config.num_eval))
    return StudyData(_lm_example(train, starts, seq_len), _lm_example(val, eval_starts, seq_len),
                     "inputs", "targets")
  raise ValueError(f"config.data.name={name!r} must be one of {NAMES}")
