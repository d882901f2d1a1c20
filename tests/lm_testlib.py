"""Shared pieces for the framework tests: a tiny LM config and synthetic data."""
from __future__ import annotations

import hashlib

import ml_collections
import numpy as np

from experiments.configs import lm_quickstart
from models import registry


def tiny_config(**trainer_overrides) -> ml_collections.ConfigDict:
  c = lm_quickstart.get_config()
  c.model.update(dict(vocab_size=128, d_model=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, d_ff=64))
  c.data.update(dict(seq_len=16, global_batch_size=16, eval_batches=2))
  c.schedule.update(dict(peak_lr=1e-2, warmup_steps=2))
  c.trainer.update(dict(total_steps=20, log_every=5, eval_every=10, progress_every_s=1e9))
  c.trainer.update(trainer_overrides)
  c.checkpoint.update(dict(every=5, keep=3, async_save=True))
  return c


def tiny_model(config):
  return registry.build(config.model)


def synthetic_arrays(num: int = 64, seq_len: int = 16, vocab: int = 128,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Packed-LM-shaped arrays with a learnable pattern (next = prev + 1 mod 100)."""
  rng = np.random.default_rng(seed)
  start = rng.integers(3, 100, size=(num, 1))
  seq = (start + np.arange(seq_len + 1)[None]) % 100 + 3
  return {
      "inputs": seq[:, :-1].astype(np.int32),
      "targets": seq[:, 1:].astype(np.int32),
      "weights": np.ones((num, seq_len), np.int32),
      "segment_ids": np.ones((num, seq_len), np.int32),
      "positions": np.tile(np.arange(seq_len, dtype=np.int32), (num, 1)),
  }


def batch_digest(batch: dict[str, np.ndarray]) -> str:
  h = hashlib.sha1()
  for k in sorted(batch):
    h.update(k.encode())
    h.update(np.ascontiguousarray(batch[k]).tobytes())
  return h.hexdigest()


class RecordingIterator:
  """Wraps a BatchIterator; records {position before next(): batch digest}."""

  def __init__(self, inner):
    self.inner = inner
    self.seen: dict[tuple, str] = {}

  def __iter__(self):
    return self

  def __next__(self):
    pos = tuple(sorted(self.inner.get_state().items()))
    batch = next(self.inner)
    digest = batch_digest(batch)
    if self.seen.get(pos, digest) != digest:
      raise AssertionError(f"position {pos} gave two different batches")
    self.seen[pos] = digest
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)
