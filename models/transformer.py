"""Decoder-only transformer language model.

Pre-norm blocks x <- x + Attn(RMSNorm(x)); x <- x + SwiGLU(RMSNorm(x)), with
rotary position embeddings (RoPE, Su et al. 2021) and grouped-query causal
attention (Ainslie et al. 2023) through `jax.nn.dot_product_attention`.

Every weight carries logical axis names (`embed`, `vocab`, `heads`, `kv_heads`,
`kv`, `mlp`, `norm`, `layers`); the framework maps them to mesh axes with the
rules in the config, so this module knows nothing about devices.

Numerics: parameters are stored in `param_dtype` (fp32); matmuls run in
`dtype` (fp32 or bf16); logits and the loss are always fp32.

Batches are dicts of int32 arrays [batch, length]:
  inputs, targets, weights (0/1 loss mask), segment_ids (packing; 0 = pad),
  positions (position of each token within its packed segment).

Decoding uses the same module with a key/value cache (`init_cache`): calling
it with `cache=` and `starts=` (the cache slot of each row's first new token)
writes the new keys/values at slots starts_b .. starts_b + T - 1 and lets
query t of row b attend to slots j <= starts_b + t (and, with a sliding
window w, j > starts_b + t - w). The slot of a token is its position, so a
right-padded batch of prompts with lengths L_b is prefilled with starts = 0
and decoded with starts = L_b, L_b + 1, ...: the padding slots are simply
overwritten. The cache holds only the kv heads (GQA), [batch, slots, kv_heads,
head_dim] per layer.

Conventions shared with the Llama family of Hugging Face checkpoints
(`models/hf_llama.py` maps the names): RoPE rotates the two halves (i, i+d/2)
of each head (HF `rotate_half`), inverse frequencies theta^(-2i/d) optionally
rescaled (`rope_scaling`: linear, or Llama 3's banded rule); untied or tied
output head; optional q/k/v biases (Qwen2); optional sliding window (Mistral).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import contract
from models import registry

Array = jax.Array
DType = Any


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int = 512
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 8
  num_kv_heads: int = 2
  head_dim: int = 32
  d_ff: int = 768
  rope_theta: float = 10_000.0
  tie_embeddings: bool = True
  norm_eps: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  # Rematerialisation of each block in the backward pass: none | full |
  # dots_saveable | dots_with_no_batch_dims_saveable (jax.checkpoint_policies).
  remat: str = "none"
  qkv_bias: bool = False            # Qwen2-style biases on the q/k/v projections
  # Tied logits are divided by sqrt(d_model) (our init has unit-variance
  # embeddings); imported HF models set this False.
  scale_tied_logits: bool = True
  rope_scaling: str = "none"        # none | linear | llama3
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0     # llama3 only
  rope_high_freq_factor: float = 4.0    # llama3 only
  rope_original_max_len: int = 8192     # llama3 only
  sliding_window: int = 0           # 0: full causal attention; w: the last w keys (Mistral)
  # One block body under `nn.scan` with weights stacked on a leading `layers`
  # axis (MaxText's scan_layers): compile time stops growing with depth. The
  # params are then {"layers": {"block": ...}}, not layer_0..layer_{L-1}; the
  # KV-cache forward and HF import/export need the unrolled layout.
  scan_layers: bool = False

  def __post_init__(self):
    if isinstance(self.remat, bool):   # older configs: remat=True/False
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r} must be one of {list(REMAT_POLICIES)}")
    if self.rope_scaling not in ("none", "linear", "llama3"):
      raise ValueError(f"model.rope_scaling={self.rope_scaling!r} must be none, linear or llama3")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE")
    # Configs name dtypes as strings ("bfloat16"); the module wants jnp dtypes.
    for field in ("dtype", "param_dtype"):
      value = getattr(self, field)
      if isinstance(value, str):
        if value not in DTYPES:
          raise ValueError(f"model.{field}={value!r} must be one of {list(DTYPES)}")
        object.__setattr__(self, field, DTYPES[value])
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads} for grouped-query attention")


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _dense_init(fan_in_axes: int = 1):
  del fan_in_axes
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, computed in fp32."""
  eps: float = 1e-6
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",),
                   self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rope_frequencies(cfg: TransformerConfig) -> np.ndarray:
  """Inverse frequencies w_i = theta^(-2i/d), i < d/2, after `cfg.rope_scaling`.

  linear: w_i / factor (position interpolation, Chen et al. 2023).
  llama3: with wavelength l_i = 2 pi / w_i and L = original_max_len,
    l_i > L / low_freq_factor   ->  w_i / factor        (long waves interpolated)
    l_i < L / high_freq_factor  ->  w_i                 (short waves kept)
    otherwise                   ->  (1 - s) w_i / factor + s w_i,
                                    s = (L / l_i - low) / (high - low).
  Computed in float32 like the reference implementation.
  """
  d = cfg.head_dim
  w = 1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
  w = w.astype(np.float32)
  factor = np.float32(cfg.rope_scaling_factor)
  if cfg.rope_scaling == "linear":
    return (w / factor).astype(np.float32)
  if cfg.rope_scaling == "llama3":
    low, high = np.float32(cfg.rope_low_freq_factor), np.float32(cfg.rope_high_freq_factor)
    orig = np.float32(cfg.rope_original_max_len)
    wavelength = np.float32(2 * np.pi) / w
    smooth = (orig / wavelength - low) / (high - low)
    mid = (1 - smooth) * w / factor + smooth * w
    out = np.where(wavelength > orig / low, w / factor, np.where(wavelength < orig / high, w, mid))
    return out.astype(np.float32)
  return w


def rope(x: Array, positions: Array, freqs: Array | float) -> Array:
  """Rotary embedding on [batch, length, heads, head_dim] by pairs (i, i + d/2).

  (x1, x2) -> (x1 cos(p w) - x2 sin(p w), x2 cos(p w) + x1 sin(p w)).
  `freqs` holds the d/2 inverse frequencies w (`rope_frequencies`); a number
  is read as theta, giving w_i = theta^(-2i/d).
  """
  d = x.shape[-1]
  if not hasattr(freqs, "shape"):
    freqs = freqs ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(freqs, jnp.float32)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


CACHE_AXES = ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv")


def init_cache(cfg: TransformerConfig, batch_size: int, num_slots: int) -> dict[str, Any]:
  """An empty key/value cache: per layer k and v of [batch, slots, kv_heads, head_dim]."""
  shape = (batch_size, num_slots, cfg.num_kv_heads, cfg.head_dim)
  return {f"layer_{i}": {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
          for i in range(cfg.num_layers)}


def cache_logical_axes(cfg: TransformerConfig) -> dict[str, Any]:
  """Logical axis names of `init_cache`'s arrays (batch over data/fsdp, kv heads over tensor)."""
  return {f"layer_{i}": {"k": CACHE_AXES, "v": CACHE_AXES} for i in range(cfg.num_layers)}


def _write_rows(cache: Array, new: Array, starts: Array) -> Array:
  """cache[b, starts_b : starts_b + T] = new[b] for every row b."""
  return jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice_in_dim(c, u, s, axis=0))(
      cache, new.astype(cache.dtype), starts)


class Attention(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array,
               cache: dict[str, Array] | None = None, starts: Array | None = None):
    cfg = self.cfg
    init = _dense_init()
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    wq = _param(self, "wq", init, (d, h, hd), ("embed", "heads", "kv"), cfg.param_dtype)
    wk = _param(self, "wk", init, (d, k, hd), ("embed", "kv_heads", "kv"), cfg.param_dtype)
    wv = _param(self, "wv", init, (d, k, hd), ("embed", "kv_heads", "kv"), cfg.param_dtype)
    wo = _param(self, "wo", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                          in_axis=(0, 1), out_axis=2),
                (h, hd, d), ("heads", "kv", "embed"), cfg.param_dtype)
    x = x.astype(cfg.dtype)
    q = jnp.einsum("btd,dnh->btnh", x, wq.astype(cfg.dtype))
    kk = jnp.einsum("btd,dkh->btkh", x, wk.astype(cfg.dtype))
    v = jnp.einsum("btd,dkh->btkh", x, wv.astype(cfg.dtype))
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "bq", zeros, (h, hd), ("heads", "kv"), cfg.param_dtype).astype(cfg.dtype)
      kk = kk + _param(self, "bk", zeros, (k, hd), ("kv_heads", "kv"),
                       cfg.param_dtype).astype(cfg.dtype)
      v = v + _param(self, "bv", zeros, (k, hd), ("kv_heads", "kv"),
                     cfg.param_dtype).astype(cfg.dtype)
    freqs = rope_frequencies(cfg)
    q = rope(q, positions, freqs)
    kk = rope(kk, positions, freqs)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length",
                                       "activation_heads", "activation_kv"))
    length = x.shape[1]
    if cache is None:
      causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
      if cfg.sliding_window:
        offset = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
        causal &= offset < cfg.sliding_window
      same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
      mask = (causal[None] & same_segment)[:, None]  # [B, 1, T, S]
      new_cache = None
    else:
      keys = nn.with_logical_constraint(_write_rows(cache["k"], kk, starts), CACHE_AXES)
      values = nn.with_logical_constraint(_write_rows(cache["v"], v, starts), CACHE_AXES)
      new_cache = {"k": keys, "v": values}
      kk, v = keys.astype(cfg.dtype), values.astype(cfg.dtype)
      query_slot = starts[:, None] + jnp.arange(length)[None, :]          # [B, T]
      key_slot = jnp.arange(keys.shape[1])[None, None, :]                 # [1, 1, S]
      mask = key_slot <= query_slot[:, :, None]
      if cfg.sliding_window:
        mask &= key_slot > query_slot[:, :, None] - cfg.sliding_window
      mask = mask[:, None]
    out = jax.nn.dot_product_attention(q, kk, v, mask=mask)
    out = jnp.einsum("btnh,nhd->btd", out, wo.astype(cfg.dtype))
    return out if cache is None else (out, new_cache)


class SwiGLU(nn.Module):
  """FFN(x) = (silu(x W_gate) * (x W_up)) W_down (Shazeer 2020)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    init = _dense_init()
    w_gate = _param(self, "w_gate", init, (cfg.d_model, cfg.d_ff), ("embed", "mlp"),
                    cfg.param_dtype)
    w_up = _param(self, "w_up", init, (cfg.d_model, cfg.d_ff), ("embed", "mlp"),
                  cfg.param_dtype)
    w_down = _param(self, "w_down", init, (cfg.d_ff, cfg.d_model), ("mlp", "embed"),
                    cfg.param_dtype)
    x = x.astype(cfg.dtype)
    hidden = nn.silu(x @ w_gate.astype(cfg.dtype)) * (x @ w_up.astype(cfg.dtype))
    hidden = nn.with_logical_constraint(
        hidden, ("activation_batch", "activation_length", "activation_mlp"))
    return hidden @ w_down.astype(cfg.dtype)


class DecoderBlock(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array,
               cache: dict[str, Array] | None = None, starts: Array | None = None):
    cfg = self.cfg
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)
    attn = Attention(cfg, name="attn")(norm("attn_norm")(x), positions, segment_ids, cache, starts)
    if cache is not None:
      attn, cache = attn
    x = x + attn
    x = x + SwiGLU(cfg, name="mlp")(norm("mlp_norm")(x))
    x = nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))
    return x if cache is None else (x, cache)


class ScannedBlock(nn.Module):
  """A decoder block as `nn.scan`'s body: (carry x, per-layer output None)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array):
    return DecoderBlock(self.cfg, name="block")(x, positions, segment_ids), None


def lm_loss_sums(logits: Array, targets: Array, weights: Array) -> dict[str, Array]:
  """Sums of token cross-entropy and accuracy, with the token count.

  Sums (not means) so that micro-batches add up exactly to one big batch.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      "loss": jnp.sum(xent * weights),
      "accuracy": jnp.sum(correct * weights),
      "tokens": jnp.sum(weights),
  }


class TransformerLM(nn.Module):
  """Decoder-only LM. `__call__` gives fp32 logits; `loss` gives summed metrics."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens: Array, positions: Array | None = None,
               segment_ids: Array | None = None, cache: dict[str, Any] | None = None,
               starts: Array | None = None):
    """Logits [B, T, vocab] (fp32); with `cache`, (logits, updated cache).

    With a cache, `starts` [B] gives each row's first cache slot (= position)
    and `positions` defaults to starts_b + t.
    """
    cfg = self.cfg
    if cache is not None:
      if starts is None:
        raise ValueError("decoding with a cache needs `starts`, each row's first cache slot")
      starts = starts.astype(jnp.int32)
      if positions is None:
        positions = starts[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    embedding = _param(self, "embedding", nn.initializers.normal(1.0),
                       (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.param_dtype)
    x = jnp.take(embedding, tokens, axis=0).astype(cfg.dtype)
    x = nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))
    policy = REMAT_POLICIES[cfg.remat]
    new_cache = {}
    if cfg.scan_layers:
      if cache is not None:
        raise NotImplementedError("model.scan_layers=True trains and scores only; KV-cache "
                                  "decoding needs the unrolled layout (scan_layers=False)")
      body = ScannedBlock
      if cfg.remat != "none":
        body = nn.remat(ScannedBlock, policy=policy, prevent_cse=False)
      stack = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, name="layers")(x, positions, segment_ids)
    else:
      block = DecoderBlock
      if cfg.remat != "none" and cache is None:
        block = nn.remat(DecoderBlock, policy=policy)
      for i in range(cfg.num_layers):
        name = f"layer_{i}"
        if cache is None:
          x = block(cfg, name=name)(x, positions, segment_ids)
        else:
          x, new_cache[name] = block(cfg, name=name)(x, positions, segment_ids, cache[name],
                                                     starts)
    x = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    if cfg.tie_embeddings:
      logits = x @ embedding.astype(cfg.dtype).T
      if cfg.scale_tied_logits:
        # Scale so tied logits start O(1) given the unit-variance embedding.
        logits = logits / jnp.sqrt(float(cfg.d_model)).astype(cfg.dtype)
    else:
      head = _param(self, "lm_head", _dense_init(), (cfg.d_model, cfg.vocab_size),
                    ("embed", "vocab"), cfg.param_dtype)
      logits = x @ head.astype(cfg.dtype)
    logits = logits.astype(jnp.float32)
    logits = nn.with_logical_constraint(
        logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits if cache is None else (logits, new_cache)

  def loss(self, batch: Mapping[str, Array]) -> dict[str, Array]:
    logits = self(batch["inputs"], batch.get("positions"), batch.get("segment_ids"))
    return lm_loss_sums(logits, batch["targets"], batch["weights"])


@registry.register("transformer", TransformerConfig)
def build(cfg: TransformerConfig) -> contract.FlaxModel:
  return contract.FlaxModel(TransformerLM(cfg))


def count_params(cfg: TransformerConfig) -> dict[str, int]:
  """Parameter counts: total, embedding (input table and untied head), non-embedding."""
  attn = cfg.d_model * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  if cfg.qkv_bias:
    attn += cfg.head_dim * (cfg.num_heads + 2 * cfg.num_kv_heads)
  mlp = 3 * cfg.d_model * cfg.d_ff
  norms = 2 * cfg.d_model
  per_layer = attn + mlp + norms
  embedding = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
  non_embedding = cfg.num_layers * per_layer + cfg.d_model
  return {"total": non_embedding + embedding, "embedding": embedding,
          "non_embedding": non_embedding}


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 N + causal attention + LM head.

  Convention (Kaplan et al. 2020 / PaLM appendix B, causal-halved):
    6 * N_non_embedding                 weight matmuls, forward + backward
    + 6 * L * T * n_heads * head_dim    QK^T and AV, 12 L T d_attn halved by the causal mask
    + 6 * d_model * vocab               the output projection (real compute, tied or not)
  The embedding lookup is a gather and counts zero.
  """
  n = count_params(cfg)["non_embedding"]
  attn = 6 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  head = 6 * cfg.d_model * cfg.vocab_size
  return float(6 * n + attn + head)
