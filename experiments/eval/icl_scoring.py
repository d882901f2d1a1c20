"""Continuation-span scoring: log p(continuation | context) in padded batches.

A request is a pair of token lists (c_1..c_n, y_1..y_m). Its row is
x = (bos, c_1, .., c_n, y_1, .., y_m) (bos optional), left-truncated to
`max_seq_len` by dropping the oldest context tokens. With one causal forward
pass giving logits z_t over the vocabulary at every position t,
  log p(y_j | x_<) = log_softmax(z_{s+j-1})[y_j],   s = index of y_1 in x,
  logprob_sum      = sum_j log p(y_j | x_<),
  greedy_match     = for every j, argmax_v z_{s+j-1, v} = y_j.
Rows are sorted by length, grouped `batch_size` at a time (the last batch
padded with empty rows), right-padded to a bucketed length and scored with
ONE jitted forward per batch (length buckets start at `min_bucket`: a large
value means fewer compilations, a small one less padding); a 0/1 mask
selects the continuation positions, so padding (which comes after every
scored position in its row) never changes a score. Compiled functions are
cached per (rows, length) bucket.

`next_token_logprobs` is the one-forward-per-example special case used for
classification with single-token labels: log p(v | context) for the
candidate ids v at the last context position, equal to `score` of the
one-token continuations.

With a mesh, params are placed by their logical axis names and the rules
(framework/sharding.py), and rows are split over the (data, fsdp) axes;
the row count is rounded up to a multiple of that size.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from framework import progress as progress_lib
from framework import sharding as sharding_lib

MIN_BUCKET = 16


def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
  """The length n is padded to: the smallest of 16, 24, 32, 48, 64, 96, ... >= n
  (powers of two and their midpoints: padding < 50%, few compilations)."""
  b = minimum
  while b < n:
    half = b // 2
    b = b + half if (b & (b - 1)) == 0 else b + b // 3   # 2^k -> 1.5 * 2^k -> 2^(k+1)
  return b


@dataclasses.dataclass
class SpanScores:
  logprob_sum: np.ndarray     # [N] float64
  num_tokens: np.ndarray      # [N] int, continuation tokens scored (after truncation: all)
  greedy_match: np.ndarray    # [N] bool
  truncated: np.ndarray       # [N] bool: context tokens were dropped to fit max_seq_len


class SpanScorer:
  """Scores (context, continuation) token pairs with a Flax LM `module`."""

  def __init__(self, module: nn.Module, params: Any, *, batch_size: int = 32,
               max_seq_len: int = 2048, bos_id: Optional[int] = None, pad_id: int = 0,
               mesh: Optional[Mesh] = None, rules: Any = None,
               max_tokens_per_batch: int = 0, min_bucket: int = MIN_BUCKET):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.module = module
    self.mesh = mesh
    self.rules = sharding_lib.normalize_rules(
        sharding_lib.DEFAULT_RULES if rules is None else rules)
    self.shards = 1 if mesh is None else int(
        np.prod([mesh.shape[a] for a in sharding_lib.BATCH_AXES]))
    self.batch_size = -(-batch_size // self.shards) * self.shards
    self.max_seq_len = int(max_seq_len)
    self.bos_id = bos_id
    self.pad_id = int(pad_id)
    self.max_tokens_per_batch = int(max_tokens_per_batch)
    self.min_bucket = max(int(min_bucket), 2)
    self.vocab_size = int(getattr(getattr(module, "cfg", None), "vocab_size", 0)) or None
    self.params = self._place(params)
    self._fns: dict[tuple, Callable] = {}
    self.forward_calls = 0

  # ------------------------------------------------------------------ placement

  def _param_shardings(self):
    boxed = jax.eval_shape(self.module.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    return sharding_lib.logical_shardings(boxed["params"], self.mesh, self.rules)

  def _place(self, params: Any) -> Any:
    params = nn.meta.unbox(params)
    if self.mesh is None:
      return params
    self._psh = self._param_shardings()
    return jax.device_put(params, self._psh)

  def _compile(self, kind: str, rows: int, length: int, extra: int = 0) -> Callable:
    key = (kind, rows, length, extra)
    if key in self._fns:
      return self._fns[key]
    module = self.module

    def spans(params, tokens, mask):
      logits = module.apply({"params": params}, tokens)[:, :-1].astype(jnp.float32)
      targets = tokens[:, 1:]
      lse = jax.nn.logsumexp(logits, axis=-1)
      tok = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - lse
      m = mask[:, 1:]
      total = jnp.sum(jnp.where(m, tok, 0.0), axis=-1)
      hit = jnp.argmax(logits, axis=-1) == targets
      match = jnp.all(hit | ~m, axis=-1)
      return total, match

    def next_token(params, tokens, last, candidates):
      logits = module.apply({"params": params}, tokens).astype(jnp.float32)
      z = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]       # [B, V]
      logp = z - jax.nn.logsumexp(z, axis=-1, keepdims=True)
      return jnp.take(logp, candidates, axis=-1)

    fn = spans if kind == "spans" else next_token
    if self.mesh is None:
      jitted = jax.jit(fn)
      self._fns[key] = jitted
      return jitted
    row_sh = sharding_lib.batch_sharding(self.mesh, 2)
    vec_sh = sharding_lib.batch_sharding(self.mesh, 1)
    rep = sharding_lib.batch_sharding(self.mesh, 0)
    in_sh = ((self._psh, row_sh, row_sh) if kind == "spans"
             else (self._psh, row_sh, vec_sh, rep))
    jitted = jax.jit(fn, in_shardings=in_sh)
    mesh, rules = self.mesh, self.rules

    def call(*args):
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jitted(*args)
    self._fns[key] = call
    return call

  # ------------------------------------------------------------------ rows

  def _row(self, n: int, context: Sequence[int], continuation: Sequence[int]
           ) -> tuple[list[int], int, bool]:
    """(tokens, index of the first continuation token, truncated?)."""
    cont = [int(t) for t in continuation]
    ctx = ([] if self.bos_id is None else [int(self.bos_id)]) + [int(t) for t in context]
    if not cont:
      raise ValueError(f"request {n}: the continuation is empty (nothing to score)")
    if not ctx:
      raise ValueError(f"request {n}: the context is empty and no bos_id is set; the first "
                       "continuation token needs a token before it")
    if len(cont) >= self.max_seq_len:
      raise ValueError(f"request {n}: the continuation has {len(cont)} tokens, which leaves no "
                       f"context within max_seq_len={self.max_seq_len}")
    keep = self.max_seq_len - len(cont)
    truncated = len(ctx) > keep
    if truncated:
      ctx = ctx[len(ctx) - keep:]
    row = ctx + cont
    if self.vocab_size is not None:
      bad = [t for t in row if not 0 <= t < self.vocab_size]
      if bad:
        raise ValueError(f"request {n}: token id {bad[0]} is outside the model's vocabulary "
                         f"[0, {self.vocab_size})")
    return row, len(ctx), truncated

  def _batches(self, lengths: Sequence[int]):
    """Groups of request indices (sorted by length) and each group's bucketed length."""
    order = sorted(range(len(lengths)), key=lambda n: (lengths[n], n))
    start = 0
    while start < len(order):
      length = bucket_length(lengths[order[min(start + self.batch_size, len(order)) - 1]],
                             self.min_bucket)
      rows = self.batch_size
      if self.max_tokens_per_batch:
        rows = max(self.shards, (self.max_tokens_per_batch // length) // self.shards * self.shards)
        rows = min(rows, self.batch_size)
        length = bucket_length(lengths[order[min(start + rows, len(order)) - 1]],
                               self.min_bucket)
      yield order[start:start + rows], rows, length
      start += rows

  # ------------------------------------------------------------------ scoring

  def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
            progress: Optional[progress_lib.Progress] = None) -> SpanScores:
    """logprob_sum, num_tokens, greedy_match, truncated per (context, continuation) pair."""
    built = [self._row(n, c, y) for n, (c, y) in enumerate(pairs)]
    total = np.zeros(len(built), np.float64)
    match = np.zeros(len(built), bool)
    count = np.asarray([len(r) - s for r, s, _ in built], np.int64)
    trunc = np.asarray([t for _, _, t in built], bool)
    for members, rows, length in self._batches([len(r) for r, _, _ in built]):
      tokens = np.full((rows, length), self.pad_id, np.int32)
      mask = np.zeros((rows, length), bool)
      for i, n in enumerate(members):
        row, s, _ = built[n]
        tokens[i, :len(row)] = row
        mask[i, s:len(row)] = True
      out_sum, out_match = self._compile("spans", rows, length)(self.params, tokens, mask)
      self.forward_calls += 1
      out_sum, out_match = np.asarray(out_sum), np.asarray(out_match)
      for i, n in enumerate(members):
        total[n] = out_sum[i]
        match[n] = out_match[i]
      if progress is not None:
        progress.update(len(members))
    return SpanScores(total, count, match, trunc)

  def next_token_logprobs(self, contexts: Sequence[Sequence[int]], candidates: Sequence[int], *,
                          progress: Optional[progress_lib.Progress] = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(log p(v | context) [N, len(candidates)], truncated [N]) at each context's end."""
    candidates = np.asarray(list(candidates), np.int32)
    rows_built = []
    for n, ctx in enumerate(contexts):
      row, s, t = self._row(n, ctx, [int(candidates[0])])
      rows_built.append((row[:-1], t))   # the context part only
    out = np.zeros((len(rows_built), len(candidates)), np.float64)
    trunc = np.asarray([t for _, t in rows_built], bool)
    for members, rows, length in self._batches([len(r) for r, _ in rows_built]):
      tokens = np.full((rows, length), self.pad_id, np.int32)
      last = np.zeros((rows,), np.int32)
      for i, n in enumerate(members):
        row = rows_built[n][0]
        tokens[i, :len(row)] = row
        last[i] = len(row) - 1
      logp = self._compile("next", rows, length, len(candidates))(
          self.params, tokens, last, candidates)
      self.forward_calls += 1
      logp = np.asarray(logp)
      for i, n in enumerate(members):
        out[n] = logp[i]
      if progress is not None:
        progress.update(len(members))
    return out, trunc


def per_request_reference(module: nn.Module, params: Any,
                          pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                          bos_id: Optional[int] = None) -> SpanScores:
  """A plain per-example jitted loop (one unpadded forward per request): the
  baseline of the throughput benchmark."""
  fwd = jax.jit(lambda p, t: module.apply({"params": p}, t))
  params = nn.meta.unbox(params)
  sums, counts, matches = [], [], []
  for context, continuation in pairs:
    row = ([] if bos_id is None else [bos_id]) + list(context) + list(continuation)
    logits = np.asarray(fwd(params, np.asarray([row], np.int32)))[0].astype(np.float64)
    s = len(row) - len(continuation)
    z = logits[s - 1:len(row) - 1]
    top = z.max(axis=-1, keepdims=True)
    logp = z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
    y = np.asarray(continuation)
    sums.append(float(logp[np.arange(len(y)), y].sum()))
    counts.append(len(y))
    matches.append(bool(np.all(z.argmax(axis=-1) == y)))
  return SpanScores(np.asarray(sums), np.asarray(counts), np.asarray(matches),
                    np.zeros(len(pairs), bool))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0
