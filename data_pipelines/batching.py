"""Deterministic, resumable batching over in-memory (or memory-mapped) arrays.

Epoch e visits the examples in the order `permutation(N)` drawn from
`np.random.default_rng([seed, e])`; global batch b is the slice
[b * B, (b + 1) * B) of that order (the tail that does not fill a batch is
dropped), and data shard s of S (one per host) takes rows
[s * B / S, (s + 1) * B / S) of it. The whole position is (epoch, batch), so
a restored iterator yields exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Infinite iterator of host-local batches with `get_state`/`set_state`."""

  def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int, *,
               seed: int = 0, shard_index: int = 0, num_shards: int = 1,
               shuffle: bool = True):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"arrays must have the same number of examples, got {sizes}")
    self.num_examples = next(iter(sizes.values()))
    if global_batch_size % num_shards:
      raise ValueError(f"global batch size {global_batch_size} is not divisible by "
                       f"the {num_shards} data shards (hosts)")
    if self.num_examples < global_batch_size:
      raise ValueError(f"only {self.num_examples} examples for a global batch of "
                       f"{global_batch_size}")
    self.arrays = dict(arrays)
    self.global_batch_size = global_batch_size
    self.seed, self.shard_index, self.num_shards = seed, shard_index, num_shards
    self.shuffle = shuffle
    self.batches_per_epoch = self.num_examples // global_batch_size
    self.epoch, self.batch = 0, 0
    self._order_epoch, self._order = -1, None

  def _epoch_order(self) -> np.ndarray:
    if self._order_epoch != self.epoch:
      if self.shuffle:
        self._order = np.random.default_rng([self.seed, self.epoch]).permutation(
            self.num_examples)
      else:
        self._order = np.arange(self.num_examples)
      self._order_epoch = self.epoch
    return self._order

  def __next__(self) -> dict[str, np.ndarray]:
    order = self._epoch_order()
    per_shard = self.global_batch_size // self.num_shards
    start = self.batch * self.global_batch_size + self.shard_index * per_shard
    idx = order[start:start + per_shard]
    out = {k: np.asarray(v[idx]) for k, v in self.arrays.items()}
    self.batch += 1
    if self.batch >= self.batches_per_epoch:
      self.epoch, self.batch = self.epoch + 1, 0
    return out

  def get_state(self) -> dict[str, int]:
    """The position, and what fixes the stream it is a position in."""
    return {"epoch": int(self.epoch), "batch": int(self.batch), "seed": int(self.seed),
            "global_batch_size": int(self.global_batch_size),
            "num_shards": int(self.num_shards)}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a saved position; refuses one of another stream (other seed or
    global batch size), where the same (epoch, batch) would name other
    examples. Another shard count is the same stream split over another
    number of hosts (global batch b is the same rows), so a run resumes on
    more or fewer processes. States saved before the batch size was recorded
    carry only the seed, which is all they can be checked against."""
    mine = {"seed": self.seed, "global_batch_size": self.global_batch_size}
    differ = [f"{k} {int(state[k])} (now {v})" for k, v in mine.items()
              if k in state and int(state[k]) != v]
    if differ:
      raise ValueError(f"checkpointed data stream differs from the config's: "
                       f"{', '.join(differ)}; refusing to resume a different stream")
    self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
