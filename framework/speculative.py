"""Speculative decoding: a small draft model proposes, the target verifies.

(Leviathan, Kalman and Matias 2023; Chen et al. 2023.) Both models have the
`TransformerLM` cache interface (`module.apply({"params": p}, tokens,
cache=..., starts=...) -> (logits, cache)`, caches from
`transformer.init_cache`): a MatFormer sub-model and its universal model, or
any two LMs over the same vocabulary.

State of row b: its tokens x_1 .. x_n (prompt and output so far); both caches
hold the keys/values of every slot < n - 1. One round, for every row at once:

  1. Draft gamma tokens with the draft's cache: q_i = q(. | x, d_<i),
     d_i ~ q_i (argmax when greedy), i = 1 .. gamma. The first draft call
     re-feeds x_{n-1} and x_n at slots n-2, n-1, so the draft cache also
     covers d_gamma after a round that accepted all gamma drafts.
  2. Verify in one target call on (x_n, d_1, ..., d_gamma) at slots n-1 ..
     n+gamma-1: p_1 .. p_{gamma+1}, p_i = p(. | x, d_<i).
  3. Accept. Greedy: k = the number of leading i with d_i = argmax p_i, then
     emit argmax p_{k+1}: token for token the target's greedy output.
     Sampling: accept d_i with probability min(1, p_i(d_i) / q_i(d_i)) (draw
     u_i ~ U[0, 1), accept iff u_i q_i(d_i) < p_i(d_i)), k = the number of
     leading accepted; emit y ~ norm(max(0, p_{k+1} - q_{k+1})) if k < gamma,
     else y ~ p_{gamma+1} (q_{gamma+1} := 0). Every emitted token is then
     distributed as p: P(emit v) = min(p(v), q(v)) + (1 - sum_u min(p(u), q(u)))
     max(0, p(v) - q(v)) / sum_u max(0, p(u) - q(u)) = p(v), so the output
     sequence is distributed as the target's own sampling.
  The round emits k + 1 tokens (cut at a stop token or at max_new_tokens);
  the target's cache is valid for the accepted prefix, later slots are
  overwritten before any query can attend to them.

p and q are the sampling distributions after the same temperature, top-k and
top-p processing (`decoding`'s filters), so the output follows the target's
processed distribution. Acceptance rate = accepted drafts / drafted tokens;
tokens per round = emitted tokens / target calls (at most gamma + 1).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from framework import decoding
from models import transformer as tr

Array = jax.Array


@dataclasses.dataclass
class SpeculativeResult:
  """tokens [B, N] (a row's stop token included, pad_id after it),
  num_generated [B], finish_reason per row ("stop" | "length"),
  prompt_lengths [B]; rounds: target verification calls (shared by the
  batch); drafted / accepted [B]: draft tokens proposed / accepted per row."""
  tokens: np.ndarray
  num_generated: np.ndarray
  finish_reason: list[str]
  prompt_lengths: np.ndarray
  rounds: int
  drafted: np.ndarray
  accepted: np.ndarray

  @property
  def acceptance_rate(self) -> float:
    return float(self.accepted.sum() / max(self.drafted.sum(), 1))

  @property
  def tokens_per_round(self) -> float:
    """Mean tokens a row gains per target call while it is active."""
    rounds_active = self.drafted / max(self.gamma, 1)
    return float(self.num_generated.sum() / max(rounds_active.sum(), 1))

  gamma: int = 0


def sampling_probs(logits: Array, temperature: Array | float, top_k: int,
                   top_p: Array | float | None) -> Array:
  """The distribution `decoding.sample_logits` draws from (temperature > 0)."""
  z = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
  z = decoding.top_k_filter(z, int(top_k))
  if top_p is not None:
    z = decoding.top_p_filter(z, top_p)
  return jax.nn.softmax(z, axis=-1)


def _rows_slice(x: Array, starts: Array, size: int) -> Array:
  return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, size, axis=0))(x, starts)


def _rows_update(x: Array, new: Array, starts: Array) -> Array:
  return jax.vmap(lambda row, u, s: jax.lax.dynamic_update_slice_in_dim(row, u, s, axis=0))(
      x, new, starts)


@functools.lru_cache(maxsize=32)
def _speculative_fn(target: nn.Module, draft: nn.Module, batch: int, prompt_len: int,
                    cache_size: int, max_new: int, gamma: int, greedy_only: bool, top_k: int,
                    use_top_p: bool, stop_tokens: tuple[int, ...], pad_id: int):
  buf_len = cache_size + gamma + 2
  stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

  def is_stop(tok):
    return (jnp.any(tok[..., None] == stops, axis=-1) if stop_tokens
            else jnp.zeros(tok.shape, jnp.bool_))

  def run(tparams, dparams, tokens, lengths, key, temperature, top_p):
    top_p = top_p if use_top_p else None

    def draw(logits, rng):
      """(token, its distribution) from logits [B, V]."""
      if greedy_only:
        return decoding.greedy(logits), None
      q = sampling_probs(logits, temperature, top_k, top_p)
      return jax.random.categorical(rng, jnp.log(q), axis=-1).astype(jnp.int32), q

    zeros = jnp.zeros((batch,), jnp.int32)
    _, tcache = target.apply({"params": tparams}, tokens,
                             cache=tr.init_cache(target.cfg, batch, cache_size), starts=zeros)
    _, dcache = draft.apply({"params": dparams}, tokens,
                            cache=tr.init_cache(draft.cfg, batch, cache_size), starts=zeros)
    seq = jnp.full((batch, buf_len), pad_id, jnp.int32).at[:, :prompt_len].set(tokens)
    state = dict(seq=seq, n=lengths, generated=zeros, done=jnp.zeros((batch,), jnp.bool_),
                 tcache=tcache, dcache=dcache, key=key, rounds=jnp.int32(0),
                 drafted=zeros, accepted=zeros)

    def body(s):
      key, k_draft, k_accept, k_fix = jax.random.split(s["key"], 4)
      n, seq = s["n"], s["seq"]
      # 1. Draft gamma tokens.
      start = jnp.maximum(n - 2, 0)
      logits, dcache = draft.apply({"params": dparams}, _rows_slice(seq, start, 2),
                                   cache=s["dcache"], starts=start)
      logits = jnp.take_along_axis(logits, (n - 1 - start)[:, None, None], axis=1)[:, 0]

      def draft_step(carry, i):
        logits, dcache = carry
        tok, q = draw(logits, jax.random.fold_in(k_draft, i))
        logits, dcache = draft.apply({"params": dparams}, tok[:, None], cache=dcache,
                                     starts=n + i)
        return (logits[:, 0], dcache), (tok, q)

      (logits, dcache), (toks, qs) = jax.lax.scan(draft_step, (logits, dcache),
                                                  jnp.arange(gamma - 1))
      tok, q = draw(logits, jax.random.fold_in(k_draft, gamma - 1))
      drafts = jnp.concatenate([toks.T.reshape(batch, gamma - 1), tok[:, None]], axis=1)
      # 2. Verify with one target call.
      last = _rows_slice(seq, n - 1, 1)
      tlogits, tcache = target.apply({"params": tparams},
                                     jnp.concatenate([last, drafts], axis=1),
                                     cache=s["tcache"], starts=n - 1)
      # 3. Accept.
      j = jnp.arange(gamma + 1)[None, :]
      if greedy_only:
        choice = decoding.greedy(tlogits)                             # [B, gamma + 1]
        ok = drafts == choice[:, :gamma]
        k = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
        new = choice                        # equals the drafts where they were accepted
      else:
        qs = jnp.concatenate([jnp.moveaxis(qs, 0, 1), q[:, None]], axis=1)  # [B, gamma, V]
        p = sampling_probs(tlogits, temperature, top_k, top_p)             # [B, gamma+1, V]
        p_d = jnp.take_along_axis(p[:, :gamma], drafts[..., None], axis=-1)[..., 0]
        q_d = jnp.take_along_axis(qs, drafts[..., None], axis=-1)[..., 0]
        u = jax.random.uniform(k_accept, (batch, gamma))
        ok = u * q_d < p_d
        k = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
        q_pad = jnp.concatenate([qs, jnp.zeros_like(qs[:, :1])], axis=1)
        p_k = jnp.take_along_axis(p, k[:, None, None], axis=1)[:, 0]
        q_k = jnp.take_along_axis(q_pad, k[:, None, None], axis=1)[:, 0]
        residual = jnp.maximum(p_k - q_k, 0.0)
        mass = jnp.sum(residual, axis=-1, keepdims=True)
        residual = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), p_k)
        fix = jax.random.categorical(k_fix, jnp.log(residual), axis=-1).astype(jnp.int32)
        new = jnp.where(j < k[:, None], jnp.pad(drafts, ((0, 0), (0, 1))), fix[:, None])
      # 4. Append k + 1 tokens, cut at a stop token and at max_new.
      count = jnp.minimum(k + 1, max_new - s["generated"])
      stop_at = jnp.where(is_stop(new) & (j < count[:, None]), j, gamma + 1).min(axis=1)
      count = jnp.where(s["done"], 0, jnp.minimum(count, stop_at + 1))
      window = _rows_slice(seq, n, gamma + 1)
      seq = _rows_update(seq, jnp.where(j < count[:, None], new, window), n)
      generated = s["generated"] + count
      active = (~s["done"]).astype(jnp.int32)
      done = s["done"] | (generated >= max_new) | (stop_at < count)
      return dict(seq=seq, n=n + count, generated=generated, done=done, tcache=tcache,
                  dcache=dcache, key=key, rounds=s["rounds"] + 1,
                  drafted=s["drafted"] + gamma * active, accepted=s["accepted"] + k * active)

    s = jax.lax.while_loop(lambda s: ~jnp.all(s["done"]), body, state)
    out = _rows_slice(s["seq"], lengths, max_new)
    out = jnp.where(jnp.arange(max_new)[None, :] < s["generated"][:, None], out, pad_id)
    stopped = jnp.any(is_stop(out) & (jnp.arange(max_new)[None, :] < s["generated"][:, None]),
                      axis=1)
    return out, s["generated"], stopped, s["rounds"], s["drafted"], s["accepted"]

  return jax.jit(run)


def speculative_generate(target: nn.Module, target_params: Any, draft: nn.Module,
                         draft_params: Any, prompts: Any, *, max_new_tokens: int,
                         gamma: int = 4, temperature: float = 0.0, top_k: int = 0,
                         top_p: float = 1.0, stop_tokens: Sequence[int] = (), seed: int = 0,
                         pad_id: int = 0, cache_size: int | None = None) -> SpeculativeResult:
  """Continues each prompt by up to `max_new_tokens` tokens of the target's
  distribution, drafting `gamma` tokens per round with `draft` (module docstring).

  target / draft: modules with the `TransformerLM` cache interface and the
  same vocabulary (e.g. `MatFormerLM(cfg)` and `MatFormerLM(cfg, granularity=m)`
  with the same params). prompts, temperature, top_k, top_p, stop_tokens,
  pad_id as `decoding.generate`.
  """
  for name, module in (("target", target), ("draft", draft)):
    if not isinstance(getattr(module, "cfg", None), tr.TransformerConfig):
      raise TypeError(f"speculative_generate: {name} needs a transformer-style module with a "
                      f"TransformerConfig `cfg`, got {type(module).__name__}")
  if draft.cfg.vocab_size != target.cfg.vocab_size:
    raise ValueError(f"draft vocab_size={draft.cfg.vocab_size} differs from the target's "
                     f"{target.cfg.vocab_size}")
  gamma, max_new = int(gamma), int(max_new_tokens)
  if gamma < 1:
    raise ValueError(f"gamma={gamma} must be >= 1 (draft tokens per round)")
  if max_new < 1:
    raise ValueError(f"max_new_tokens={max_new} must be >= 1")
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy)")
  if top_k < 0 or not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_k={top_k} must be >= 0 and top_p={top_p} in (0, 1]")
  tokens, lengths = decoding.prompt_arrays(prompts, pad_id)
  for what, cfg in (("target", target.cfg), ("draft", draft.cfg)):
    decoding._check_ids(tokens, lengths, cfg.vocab_size, f"prompt ({what})")  # pylint: disable=protected-access
  longest = int(lengths.max())
  needed = longest + max_new + gamma
  cache_size = decoding.bucket_length(needed) if cache_size is None else int(cache_size)
  if cache_size < needed:
    raise ValueError(f"cache_size={cache_size} is too small: the longest prompt ({longest}) "
                     f"+ max_new_tokens ({max_new}) + gamma ({gamma}) needs {needed} slots")
  prompt_len = min(decoding.bucket_length(longest), cache_size)
  batch = tokens.shape[0]
  padded = np.full((batch, prompt_len), pad_id, np.int32)
  width = min(tokens.shape[1], prompt_len)
  padded[:, :width] = tokens[:, :width]
  greedy_only = temperature == 0
  fn = _speculative_fn(target, draft, batch, prompt_len, cache_size, max_new, gamma,
                       greedy_only, 0 if greedy_only else int(top_k),
                       (not greedy_only) and top_p < 1.0, tuple(int(t) for t in stop_tokens),
                       int(pad_id))
  out, count, stopped, rounds, drafted, accepted = fn(
      nn.meta.unbox(target_params), nn.meta.unbox(draft_params), padded, lengths,
      jax.random.PRNGKey(seed), np.float32(max(temperature, 1e-6)), np.float32(top_p))
  stopped = np.asarray(stopped)
  return SpeculativeResult(
      tokens=np.asarray(out), num_generated=np.asarray(count),
      finish_reason=["stop" if s else "length" for s in stopped], prompt_lengths=lengths,
      rounds=int(rounds), drafted=np.asarray(drafted), accepted=np.asarray(accepted),
      gamma=gamma)
