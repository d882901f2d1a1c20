"""Per-document mean token loss under an LM, batched, sharded and resumable.

A document x is tokenized and cut exactly as the LM's training path cuts it
(`data_pipelines.lm_data`: chunks c_1..c_m of at most L - 1 tokens, EOS
appended to each, the decoder input the chunk shifted right after id 0), so

    L(x) = (1 / N(x)) sum_j sum_t -log p_theta(y_{j,t} | y_{j,<t}),
    N(x) = sum_j (|c_j| + 1),

the loss the model was trained on, per document. Chunks are packed in
document order into rows of L tokens (segment ids and per-segment positions,
as the training batches are), rows go through the model in batches of
`batch_rows` sharded over the mesh's (data, fsdp) axes, per-token losses come
back to the host and are summed per document in float64.

`score_to_store` runs this over a list of documents in blocks of
`block_size` and commits each block to a `data_pipelines.color_filter.
score_store.ScoreStore` (columns loss, nll_sum, tokens): a killed run resumes
at the first uncommitted block and the finished store is the same as an
uninterrupted run's. Progress: docs/s and tokens/s.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines.color_filter import score_store
from framework import mesh as mesh_lib
from framework import progress as progress_lib
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from models import contract

EOS_ID = 1   # seqio's EOS (ByteVocabulary and the framework's vocabularies)
BYTE_OFFSET = 3   # seqio.ByteVocabulary: ids 0, 1, 2 are pad, EOS, unk; byte b is b + 3
COLUMNS = {"loss": "float64", "nll_sum": "float64", "tokens": "int64"}


def doc_chunks(tokens: Sequence[int], seq_len: int, eos_id: int = EOS_ID) -> list[list[int]]:
  """Chunks of at most seq_len - 1 tokens, each followed by EOS (the training cut)."""
  size = seq_len - 1
  toks = list(tokens)
  return [toks[i:i + size] + [eos_id] for i in range(0, len(toks), size)]


@dataclasses.dataclass
class PackedRows:
  """Chunks packed into rows; chunk k sits at rows[k] columns [starts[k], starts[k] + lens[k])."""
  inputs: np.ndarray        # [R, L] decoder inputs (0 at each segment start)
  targets: np.ndarray       # [R, L]
  positions: np.ndarray     # [R, L]
  segment_ids: np.ndarray   # [R, L], 0 = padding
  rows: np.ndarray          # [K]
  starts: np.ndarray        # [K]
  lens: np.ndarray          # [K]
  docs: np.ndarray          # [K] index of the chunk's document


def pack_chunks(chunks_per_doc: Sequence[Sequence[Sequence[int]]], seq_len: int) -> PackedRows:
  """Packs chunks in order (a chunk starts a new row when it does not fit)."""
  rows, starts, lens, docs = [], [], [], []
  row, used = -1, seq_len
  for d, chunks in enumerate(chunks_per_doc):
    for c in chunks:
      if used + len(c) > seq_len:
        row, used = row + 1, 0
      rows.append(row)
      starts.append(used)
      lens.append(len(c))
      docs.append(d)
      used += len(c)
  n = row + 1
  arr = {k: np.zeros((n, seq_len), np.int32) for k in ("inputs", "targets", "positions", "seg")}
  seg_count = np.zeros((max(n, 1),), np.int32)
  k = 0
  for chunks in chunks_per_doc:
    for c in chunks:
      r, s, ln = rows[k], starts[k], lens[k]
      seg_count[r] += 1
      arr["targets"][r, s:s + ln] = c
      arr["inputs"][r, s + 1:s + ln] = c[:-1]
      arr["positions"][r, s:s + ln] = np.arange(ln)
      arr["seg"][r, s:s + ln] = seg_count[r]
      k += 1
  return PackedRows(arr["inputs"], arr["targets"], arr["positions"], arr["seg"],
                    np.asarray(rows, np.int64), np.asarray(starts, np.int64),
                    np.asarray(lens, np.int64), np.asarray(docs, np.int64))


class Scorer:
  """Token losses of a transformer LM's `module` with `params`, on `mesh`."""

  def __init__(self, model: Any, params: Any, *, seq_len: int, batch_rows: int,
               mesh=None, rules: Any = None, vocabulary: Any = None):
    self.model = contract.as_model(model)
    self.module = self.model.module
    self.mesh = mesh if mesh is not None else mesh_lib.create_mesh(
        {"data": -1, "fsdp": 1, "tensor": 1})
    self.rules = sharding_lib.normalize_rules(sharding_lib.DEFAULT_RULES if rules is None
                                              else rules)
    shards = int(self.mesh.shape["data"]) * int(self.mesh.shape["fsdp"])
    if batch_rows < 1 or batch_rows % shards:
      raise ValueError(f"batch_rows={batch_rows} must be a positive multiple of the "
                       f"data x fsdp mesh size {shards}")
    if seq_len < 2:
      raise ValueError(f"seq_len={seq_len} must be >= 2")
    self.seq_len, self.batch_rows = int(seq_len), int(batch_rows)
    self.vocabulary = vocabulary
    example = {k: np.zeros((batch_rows, seq_len), np.int32)
               for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    _, p_shardings = train_state_lib.param_shardings(
        self.model, jax.random.PRNGKey(0), example, self.mesh, self.rules)
    self.params = jax.device_put(nn.meta.unbox(params), p_shardings)
    batch_sh = sharding_lib.batch_sharding(self.mesh, 2)
    module = self.module

    def token_nll(params, inputs, targets, positions, segment_ids):
      logits = module.apply({"params": params}, inputs, positions, segment_ids)
      return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)

    self._jitted = jax.jit(token_nll, in_shardings=(p_shardings,) + (batch_sh,) * 4,
                           out_shardings=batch_sh)

  def token_nll(self, inputs, targets, positions, segment_ids) -> np.ndarray:
    """[B, L] per-token -log p on the mesh (B = batch_rows)."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      put = lambda x: sharding_lib.global_batch({"x": x}, self.mesh)["x"]
      return np.asarray(self._jitted(self.params, put(inputs), put(targets), put(positions),
                                     put(segment_ids)))

  def encode(self, text: str) -> list[int]:
    """The vocabulary's ids; without one, seqio.ByteVocabulary's (UTF-8 bytes
    + 3), computed here so scoring needs no TensorFlow."""
    if self.vocabulary is None:
      return [b + BYTE_OFFSET for b in text.encode("utf-8")]
    return list(self.vocabulary.encode(text))

  def score_tokens(self, token_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(nll_sum float64 [n], tokens int64 [n]) of each document's tokens."""
    chunks = [doc_chunks(t, self.seq_len) for t in token_lists]
    packed = pack_chunks(chunks, self.seq_len)
    nll_sum = np.zeros((len(token_lists),), np.float64)
    count = np.zeros((len(token_lists),), np.int64)
    n_rows = packed.inputs.shape[0]
    for b0 in range(0, n_rows, self.batch_rows):
      sl = slice(b0, min(b0 + self.batch_rows, n_rows))
      pad = self.batch_rows - (sl.stop - sl.start)
      arrays = [np.pad(a[sl], ((0, pad), (0, 0)))
                for a in (packed.inputs, packed.targets, packed.positions, packed.segment_ids)]
      nll = self.token_nll(*arrays)
      for k in np.nonzero((packed.rows >= sl.start) & (packed.rows < sl.stop))[0]:
        r, s, ln = packed.rows[k] - b0, packed.starts[k], packed.lens[k]
        nll_sum[packed.docs[k]] += float(np.sum(nll[r, s:s + ln], dtype=np.float64))
        count[packed.docs[k]] += ln
    return nll_sum, count

  def score_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{"loss", "nll_sum", "tokens"} per text (loss = nll_sum / tokens; NaN
    for a text without tokens)."""
    nll_sum, tokens = self.score_tokens([self.encode(t) for t in texts])
    with np.errstate(invalid="ignore", divide="ignore"):
      loss = np.where(tokens > 0, nll_sum / np.maximum(tokens, 1), np.nan)
    return {"loss": loss, "nll_sum": nll_sum, "tokens": tokens}


def score_to_store(scorer: Scorer, ids: Sequence[str], texts: Sequence[str], store_dir: str, *,
                   fingerprint: str, block_size: int = 256, desc: str = "score",
                   shard_index: int = 0, num_shards: int = 1,
                   progress_every_s: float = 10.0,
                   after_block: Optional[Callable[[int], None]] = None,
                   print_fn: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
  """Scores the documents into the store at `store_dir` (resuming it).

  Returns {"blocks_scored", "blocks_total", "docs", "tokens", "seconds",
  "docs_per_s", "tokens_per_s"} of this call. `after_block(b)` runs after
  block b is committed (tests use it to stop a run midway).
  """
  if len(ids) != len(texts):
    raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
  store = score_store.ScoreStore.create_or_resume(
      store_dir, list(ids), COLUMNS, block_size=block_size,
      fingerprint=f"{fingerprint}|seq_len={scorer.seq_len}")
  todo = store.pending(shard_index, num_shards)
  total_docs = sum(store.block_rows(b)[1] - store.block_rows(b)[0] for b in todo)
  progress = progress_lib.Progress(total_docs, desc, every_s=progress_every_s, unit="docs",
                                   print_fn=print_fn)
  t0 = time.perf_counter()
  docs = toks = 0
  for b in todo:
    start, stop = store.block_rows(b)
    values = scorer.score_texts(texts[start:stop])
    store.commit(b, values)
    docs += stop - start
    toks += int(values["tokens"].sum())
    elapsed = time.perf_counter() - t0
    progress.update(stop - start, tokens_per_s=round(toks / max(elapsed, 1e-9), 1))
    if after_block is not None:
      after_block(b)
  seconds = time.perf_counter() - t0
  stats = {"blocks_scored": len(todo), "blocks_total": store.num_blocks, "docs": docs,
           "tokens": toks, "seconds": seconds, "docs_per_s": docs / max(seconds, 1e-9),
           "tokens_per_s": toks / max(seconds, 1e-9)}
  logging.info("%s: %s", desc, stats)
  return stats

