"""Autoregressive decoding and scoring for the transformer LM.

Generation. For prompts x^(b)_{1..L_b} (a right-padded batch), one prefill
call runs the model over the padded prompts with an empty key/value cache
(slots 0..P-1 written; slot = position), and the first new token is drawn
from p(. | x^(b)_{1..L_b}), the logits at position L_b - 1. Each decode step
i = 1 .. N-1 feeds the previous token y_{i-1} at slot L_b + i - 1 (the
padding slots of a short prompt are overwritten before any query can see
them) and draws y_i ~ p(. | x^(b), y_{<i}). The loop is a `lax.while_loop`
over a cache of static size S that exits once every row has emitted a stop
token; a stopped row emits `pad_id` afterwards. Requires L_b + N <= S.

Sampling (`sample_logits`), for logits z over the vocabulary V:
  temperature T:  q(v) proportional to exp(z_v / T); T = 0 is greedy, argmax_v z_v.
  top-k:          q restricted to the k largest z_v, renormalised (k = 0: off).
  top-p (nucleus, Holtzman et al. 2020): sort q descending, q_(1) >= q_(2) >= ...,
                  keep the smallest prefix whose mass sum_{j<=m} q_(j) >= p, i.e.
                  token (m) is kept iff sum_{j<m} q_(j) < p; the top token is
                  always kept; renormalise (p = 1: off).
Applied in that order (temperature, then top-k, then top-p on the top-k
distribution), as in Hugging Face's `generate`.

Scoring (`score`): for a sequence x_0 .. x_{T-1}, the log-probabilities
log p(x_t | x_{<t}) for t = 1 .. T-1 from one causal forward pass:
log_softmax(z_{t-1})[x_t]. x_0 is conditioned on, never scored; to score
every token of a text, prepend a beginning-of-sequence id (`score_texts`'s
`bos_id`). Models trained by this framework's seqio path (DecoderFeatureConverter)
saw id 0 (the pad id) before the first token of every document, so
`bos_id=0` is their beginning of sequence; Llama-family imports use their
tokenizer's BOS.

Compiled functions are cached by static shapes and settings: the prompt
length is bucketed to a power of two (at least 16), so prompts of similar
length share one compilation. With a mesh, parameters, cache and tokens are
placed by the logical axis rules (framework/sharding.py): batch over
(data, fsdp), heads and the cache's kv heads over tensor.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from framework import sharding as sharding_lib
from models import transformer as tr

Array = jax.Array
MIN_BUCKET = 16


# ------------------------------------------------------------------ sampling

def greedy(logits: Array) -> Array:
  """argmax over the last axis (ties: the lowest id), int32."""
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def top_k_filter(logits: Array, k: int) -> Array:
  """Logits outside the k largest (per row) set to -inf; k <= 0 keeps all.

  `k` is static. Ties with the k-th value are all kept.
  """
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: Array, p: Array | float) -> Array:
  """Nucleus filter: keep the smallest most-probable set whose mass >= p.

  Token (m) of the descending order is kept iff the mass before it is < p;
  the most probable token is always kept; p >= 1 keeps everything. `p` may
  be traced.
  """
  logits = logits.astype(jnp.float32)
  order = jnp.argsort(-logits, axis=-1, stable=True)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = (mass_before < p) | (jnp.asarray(p) >= 1.0)
  keep_sorted = keep_sorted.at[..., 0].set(True)
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return jnp.where(keep, logits, -jnp.inf)


def sample_logits(logits: Array, rng: Array, temperature: Array | float = 1.0,
                  top_k: int = 0, top_p: Array | float = 1.0) -> Array:
  """One token id per row of `logits` [..., V] (int32).

  temperature 0 (a Python number) is greedy; a traced temperature selects
  greedy where it is 0. `top_k` is static (0: off); `top_p` may be traced
  (a Python 1.0: off, skipping the sort).
  """
  logits = logits.astype(jnp.float32)
  if isinstance(temperature, (int, float)) and temperature == 0:
    return greedy(logits)
  t = jnp.asarray(temperature, jnp.float32)
  scaled = logits / jnp.where(t > 0, t, 1.0)
  scaled = top_k_filter(scaled, int(top_k))
  if not (isinstance(top_p, (int, float)) and top_p >= 1.0):
    scaled = top_p_filter(scaled, top_p)
  drawn = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
  if isinstance(temperature, (int, float)):
    return drawn
  return jnp.where(t > 0, drawn, greedy(logits))


# ------------------------------------------------------------------ placement

def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
  """The static length n is padded to: the next power of two, at least `minimum`."""
  return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


def _rules(rules: Any) -> tuple:
  return sharding_lib.normalize_rules(sharding_lib.DEFAULT_RULES if rules is None else rules)


@functools.lru_cache(maxsize=32)
def _param_shardings(module: nn.Module, mesh: Mesh, rules: tuple) -> Any:
  boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  return sharding_lib.logical_shardings(boxed["params"], mesh, rules)


def _array_sharding(shape: tuple, axes: tuple, mesh: Mesh, rules: tuple) -> NamedSharding:
  return sharding_lib.logical_shardings(jax.ShapeDtypeStruct(shape, jnp.int32), mesh, rules,
                                        logical_axes=axes)


def _place_params(module: nn.Module, params: Any, mesh: Optional[Mesh], rules: tuple) -> Any:
  params = nn.meta.unbox(params)
  if mesh is None:
    return params
  return jax.device_put(params, _param_shardings(module, mesh, rules))


# ------------------------------------------------------------------ generate

@dataclasses.dataclass
class GenerateResult:
  """tokens [B, N]: the new tokens, a row's stop token included, `pad_id` after it;
  num_generated [B]: tokens emitted per row (the stop token counted);
  finish_reason: "stop" (emitted a stop token) or "length" (reached N), per row;
  prompt_lengths [B]; cache: the final key/value cache (only with return_cache);
  logits [B, N, V]: the fp32 logits each token was drawn from, before temperature
  and filtering (only with return_logits; after a row's stop token, and for the
  steps not run once every row stopped, meaningless)."""
  tokens: np.ndarray
  num_generated: np.ndarray
  finish_reason: list[str]
  prompt_lengths: np.ndarray
  cache: Any = None
  logits: Optional[np.ndarray] = None


def prompt_arrays(prompts: Any, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, P] right-padded with pad_id, lengths [B]) from either form of prompts."""
  if isinstance(prompts, tuple) and len(prompts) == 2 and np.ndim(prompts[0]) == 2:
    tokens = np.asarray(prompts[0], np.int32)
    lengths = np.asarray(prompts[1], np.int32).reshape(-1)
    if lengths.shape[0] != tokens.shape[0]:
      raise ValueError(f"prompts: lengths has {lengths.shape[0]} rows but tokens has "
                       f"{tokens.shape[0]}")
    bad = np.nonzero((lengths < 1) | (lengths > tokens.shape[1]))[0]
    if bad.size:
      b = int(bad[0])
      raise ValueError(f"prompt row {b}: length {int(lengths[b])} must be in "
                       f"[1, {tokens.shape[1]}] (the tokens array's width)")
    return tokens, lengths
  rows = [list(map(int, p)) for p in prompts]
  if not rows:
    raise ValueError("prompts: no prompts given")
  for b, row in enumerate(rows):
    if not row:
      raise ValueError(f"prompt row {b} is empty; generation needs at least one token "
                       "(e.g. a beginning-of-sequence id)")
  width = max(len(r) for r in rows)
  tokens = np.full((len(rows), width), pad_id, np.int32)
  for b, row in enumerate(rows):
    tokens[b, :len(row)] = row
  return tokens, np.asarray([len(r) for r in rows], np.int32)


def _check_ids(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int, what: str) -> None:
  valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
  bad = valid & ((tokens < 0) | (tokens >= vocab_size))
  if bad.any():
    b, t = map(int, np.argwhere(bad)[0])
    raise ValueError(f"{what} row {b}, token {t}: id {int(tokens[b, t])} is outside the "
                     f"model's vocabulary [0, {vocab_size})")


@functools.lru_cache(maxsize=64)
def _generate_fn(module: nn.Module, batch: int, prompt_len: int, cache_size: int,
                 max_new: int, greedy_only: bool, top_k: int, use_top_p: bool,
                 stop_tokens: tuple[int, ...], pad_id: int, mesh: Optional[Mesh],
                 rules: tuple, return_cache: bool, return_logits: bool):
  cfg = module.cfg
  stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

  def is_stop(tok):
    return jnp.any(tok[:, None] == stops[None, :], axis=-1) if stop_tokens else \
        jnp.zeros(tok.shape, jnp.bool_)

  def sample(logits, rng, temperature, top_p):
    if greedy_only:
      return greedy(logits)
    return sample_logits(logits, rng, temperature, top_k, top_p if use_top_p else 1.0)

  def constrain_cache(cache):
    if mesh is None:
      return cache
    return jax.lax.with_sharding_constraint(cache, cache_sh)

  def run(params, tokens, lengths, seed, temperature, top_p):
    key = jax.random.PRNGKey(seed)
    cache = constrain_cache(tr.init_cache(cfg, batch, cache_size))
    logits, cache = module.apply({"params": params}, tokens, cache=cache,
                                 starts=jnp.zeros((batch,), jnp.int32))
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    key, sub = jax.random.split(key)
    tok = sample(last, sub, temperature, top_p)
    out = jnp.full((batch, max_new), pad_id, jnp.int32).at[:, 0].set(tok)
    done = is_stop(tok)
    count = jnp.ones((batch,), jnp.int32)
    seen = (jnp.zeros((batch, max_new, cfg.vocab_size), jnp.float32).at[:, 0].set(last)
            if return_logits else None)

    def cond(carry):
      i, _, _, _, done, _, _, _ = carry
      return (i < max_new) & ~jnp.all(done)

    def body(carry):
      i, tok, cache, out, done, count, key, seen = carry
      logits, cache = module.apply({"params": params}, tok[:, None], cache=cache,
                                   starts=lengths + i - 1)
      cache = constrain_cache(cache)
      key, sub = jax.random.split(key)
      new = sample(logits[:, 0], sub, temperature, top_p)
      if return_logits:
        seen = jax.lax.dynamic_update_slice_in_dim(seen, logits, i, axis=1)
      new = jnp.where(done, pad_id, new)
      out = jax.lax.dynamic_update_slice_in_dim(out, new[:, None], i, axis=1)
      count = count + (~done).astype(jnp.int32)
      done = done | is_stop(new)
      return i + 1, new, cache, out, done, count, key, seen

    carry = (jnp.int32(1), tok, cache, out, done, count, key, seen)
    _, _, cache, out, done, count, _, seen = jax.lax.while_loop(cond, body, carry)
    return out, count, done, (cache if return_cache else None), seen

  if mesh is None:
    return jax.jit(run)
  cache_sh = sharding_lib.logical_shardings(
      jax.eval_shape(lambda: tr.init_cache(cfg, batch, cache_size)), mesh, rules,
      logical_axes=tr.cache_logical_axes(cfg))
  rep = NamedSharding(mesh, P())
  tok_sh = _array_sharding((batch, prompt_len), ("activation_batch", "activation_length"),
                           mesh, rules)
  row_sh = _array_sharding((batch,), ("activation_batch",), mesh, rules)
  out_sh = _array_sharding((batch, max_new), ("activation_batch", "activation_length"),
                           mesh, rules)
  logits_sh = _array_sharding((batch, max_new, cfg.vocab_size),
                              ("activation_batch", "activation_length", None), mesh, rules)
  jitted = jax.jit(
      run, in_shardings=(_param_shardings(module, mesh, rules), tok_sh, row_sh, rep, rep, rep),
      out_shardings=(out_sh, row_sh, row_sh, cache_sh if return_cache else None,
                     logits_sh if return_logits else None))

  def call(*args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(*args)
  return call


def generate(module: nn.Module, params: Any, prompts: Any, *, max_new_tokens: int,
             cache_size: Optional[int] = None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_tokens: Sequence[int] = (), seed: int = 0,
             pad_id: int = 0, mesh: Optional[Mesh] = None, rules: Any = None,
             return_cache: bool = False, return_logits: bool = False) -> GenerateResult:
  """Continues each prompt by up to `max_new_tokens` tokens (see the module docstring).

  module: a `TransformerLM` (`registry.build(config.model).module`); params: its
  parameters (boxed or not). prompts: a list of token-id lists, or
  (tokens [B, P] right-padded, lengths [B]). cache_size: static number of
  cache slots (default: max prompt length + max_new_tokens, bucketed); every
  row needs L_b + max_new_tokens <= cache_size. temperature 0 is greedy.
  With `mesh` (rules: default `sharding.DEFAULT_RULES`) the computation is
  sharded: batch over (data, fsdp), kv heads over tensor.
  """
  if not hasattr(module, "cfg") or not isinstance(module.cfg, tr.TransformerConfig):
    raise TypeError(f"generate needs a TransformerLM module, got {type(module).__name__}")
  cfg = module.cfg
  max_new_tokens = int(max_new_tokens)
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy)")
  if top_k < 0:
    raise ValueError(f"top_k={top_k} must be >= 0 (0: off)")
  if not 0 <= int(seed) < 2**32:
    raise ValueError(f"seed={seed} must be in [0, 2^32)")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p} must be in (0, 1] (1: off)")
  tokens, lengths = prompt_arrays(prompts, pad_id)
  _check_ids(tokens, lengths, cfg.vocab_size, "prompt")
  longest = int(lengths.max())
  if cache_size is None:
    cache_size = bucket_length(longest + max_new_tokens)
  cache_size = int(cache_size)
  too_long = np.nonzero(lengths + max_new_tokens > cache_size)[0]
  if too_long.size:
    b = int(too_long[0])
    raise ValueError(
        f"prompt row {b} has {int(lengths[b])} tokens; with max_new_tokens={max_new_tokens} "
        f"it needs {int(lengths[b]) + max_new_tokens} cache slots but cache_size={cache_size}"
        f"{f' ({too_long.size} rows too long)' if too_long.size > 1 else ''}: shorten the "
        "prompt, lower max_new_tokens or raise cache_size")
  prompt_len = min(bucket_length(longest), cache_size)
  batch = tokens.shape[0]
  padded = np.full((batch, prompt_len), pad_id, np.int32)
  width = min(tokens.shape[1], prompt_len)
  padded[:, :width] = tokens[:, :width]
  rules = _rules(rules)
  greedy_only = temperature == 0
  fn = _generate_fn(module, batch, prompt_len, cache_size, max_new_tokens, greedy_only,
                    0 if greedy_only else int(top_k), not greedy_only and top_p < 1.0,
                    tuple(int(s) for s in stop_tokens), int(pad_id), mesh, rules,
                    bool(return_cache), bool(return_logits))
  params = _place_params(module, params, mesh, rules)
  out, count, done, cache, logits = fn(params, padded, lengths, np.uint32(seed),
                                       np.float32(temperature), np.float32(top_p))
  done = np.asarray(done)
  return GenerateResult(tokens=np.asarray(out), num_generated=np.asarray(count),
                        finish_reason=["stop" if d else "length" for d in done],
                        prompt_lengths=lengths, cache=cache,
                        logits=None if logits is None else np.asarray(logits))


def generate_texts(module: nn.Module, params: Any, vocabulary: Any, texts: Sequence[str], *,
                   bos_id: Optional[int] = None, stop_at_eos: bool = True,
                   **kwargs: Any) -> list[str]:
  """Text continuations: encode with `vocabulary` (seqio-like: encode, decode,
  eos_id), prepend `bos_id` if given, stop at the vocabulary's EOS (and any
  `stop_tokens` in kwargs), decode the new tokens without the stop token.
  Other kwargs go to `generate`."""
  prompts = [([] if bos_id is None else [int(bos_id)]) + list(vocabulary.encode(t))
             for t in texts]
  stops = tuple(kwargs.pop("stop_tokens", ()))
  eos = getattr(vocabulary, "eos_id", None)
  if stop_at_eos and eos is not None and eos not in stops:
    stops += (int(eos),)
  result = generate(module, params, prompts, stop_tokens=stops, **kwargs)
  out = []
  for row, n, reason in zip(result.tokens, result.num_generated, result.finish_reason):
    ids = [int(i) for i in row[:int(n) - (1 if reason == "stop" else 0)]]
    out.append(vocabulary.decode(ids))
  return out


# ------------------------------------------------------------------ scoring

@functools.lru_cache(maxsize=64)
def _score_fn(module: nn.Module, batch: int, length: int, mesh: Optional[Mesh], rules: tuple):

  def run(params, tokens):
    logits = module.apply({"params": params}, tokens)[:, :-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]

  if mesh is None:
    return jax.jit(run)
  tok_sh = _array_sharding((batch, length), ("activation_batch", "activation_length"),
                           mesh, rules)
  out_sh = _array_sharding((batch, length - 1), ("activation_batch", "activation_length"),
                           mesh, rules)
  jitted = jax.jit(run, in_shardings=(_param_shardings(module, mesh, rules), tok_sh),
                   out_shardings=out_sh)

  def call(*args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(*args)
  return call


def score(module: nn.Module, params: Any, token_lists: Sequence[Sequence[int]], *,
          batch_size: int = 8, mesh: Optional[Mesh] = None,
          rules: Any = None) -> list[np.ndarray]:
  """Per-token log-probabilities log p(x_t | x_{<t}), t >= 1, of each sequence.

  Returns one float32 array of length max(len(x) - 1, 0) per sequence, in
  input order. Sequences are sorted by length, batched `batch_size` at a
  time (the last batch padded with empty rows), right-padded to a bucketed
  length and scored with one causal forward per batch (padding comes after
  every scored position, so it never changes a score).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  cfg = module.cfg
  seqs = [np.asarray(list(s), np.int32).reshape(-1) for s in token_lists]
  for n, s in enumerate(seqs):
    bad = np.nonzero((s < 0) | (s >= cfg.vocab_size))[0]
    if bad.size:
      raise ValueError(f"sequence {n}, token {int(bad[0])}: id {int(s[bad[0]])} is outside "
                       f"the model's vocabulary [0, {cfg.vocab_size})")
  rules = _rules(rules)
  params = _place_params(module, params, mesh, rules)
  out: list[np.ndarray] = [np.zeros((max(len(s) - 1, 0),), np.float32) for s in seqs]
  order = sorted((n for n in range(len(seqs)) if len(seqs[n]) >= 2), key=lambda n: len(seqs[n]))
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    length = bucket_length(max(len(seqs[n]) for n in members))
    tokens = np.zeros((batch_size, length), np.int32)
    for row, n in enumerate(members):
      tokens[row, :len(seqs[n])] = seqs[n]
    logp = np.asarray(_score_fn(module, batch_size, length, mesh, rules)(params, tokens))
    for row, n in enumerate(members):
      out[n] = logp[row, :len(seqs[n]) - 1].astype(np.float32)
  return out


def score_texts(module: nn.Module, params: Any, texts: Sequence[str], vocabulary: Any, *,
                bos_id: Optional[int] = None, batch_size: int = 8,
                mesh: Optional[Mesh] = None, rules: Any = None) -> list[np.ndarray]:
  """`score` of each text encoded by `vocabulary.encode` (which adds nothing).

  Without `bos_id` the first token of a text is context only (len - 1 scores);
  with it, `bos_id` is prepended and every token of the text is scored
  (len scores, the first being log p(x_1 | BOS)). See the module docstring
  for which BOS a model expects.
  """
  lists = [([] if bos_id is None else [int(bos_id)]) + list(vocabulary.encode(t)) for t in texts]
  return score(module, params, lists, batch_size=batch_size, mesh=mesh, rules=rules)


def total_log_prob(scores: Sequence[np.ndarray]) -> np.ndarray:
  """sum_t log p(x_t | x_<t) per sequence (float64), from `score`'s output."""
  return np.asarray([float(np.sum(s, dtype=np.float64)) for s in scores])
