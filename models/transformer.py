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
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
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
  remat: bool = False

  def __post_init__(self):
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


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding on [batch, length, heads, head_dim] by pairs (i, i + d/2).

  (x1, x2) -> (x1 cos(p w) - x2 sin(p w), x2 cos(p w) + x1 sin(p w)),
  w_i = theta^(-2i/d).
  """
  d = x.shape[-1]
  freqs = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, d/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array) -> Array:
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
    q = rope(q, positions, cfg.rope_theta)
    kk = rope(kk, positions, cfg.rope_theta)
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length",
                                       "activation_heads", "activation_kv"))
    length = x.shape[1]
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = (causal[None] & same_segment)[:, None]  # [B, 1, T, S]
    out = jax.nn.dot_product_attention(q, kk, v, mask=mask)
    out = jnp.einsum("btnh,nhd->btd", out, wo.astype(cfg.dtype))
    return out


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
  def __call__(self, x: Array, positions: Array, segment_ids: Array) -> Array:
    cfg = self.cfg
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)
    x = x + Attention(cfg, name="attn")(norm("attn_norm")(x), positions, segment_ids)
    x = x + SwiGLU(cfg, name="mlp")(norm("mlp_norm")(x))
    return nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))


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
               segment_ids: Array | None = None) -> Array:
    cfg = self.cfg
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    embedding = _param(self, "embedding", nn.initializers.normal(1.0),
                       (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg.param_dtype)
    x = jnp.take(embedding, tokens, axis=0).astype(cfg.dtype)
    x = nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))
    block = nn.remat(DecoderBlock) if cfg.remat else DecoderBlock
    for i in range(cfg.num_layers):
      x = block(cfg, name=f"layer_{i}")(x, positions, segment_ids)
    x = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    if cfg.tie_embeddings:
      # Scale so tied logits start O(1) given the unit-variance embedding.
      logits = (x @ embedding.astype(cfg.dtype).T) / jnp.sqrt(float(cfg.d_model)).astype(cfg.dtype)
    else:
      head = _param(self, "lm_head", _dense_init(), (cfg.d_model, cfg.vocab_size),
                    ("embed", "vocab"), cfg.param_dtype)
      logits = x @ head.astype(cfg.dtype)
    logits = logits.astype(jnp.float32)
    return nn.with_logical_constraint(
        logits, ("activation_batch", "activation_length", "activation_vocab"))

  def loss(self, batch: Mapping[str, Array]) -> dict[str, Array]:
    logits = self(batch["inputs"], batch.get("positions"), batch.get("segment_ids"))
    return lm_loss_sums(logits, batch["targets"], batch["weights"])


@registry.register("transformer", TransformerConfig)
def build(cfg: TransformerConfig) -> contract.FlaxModel:
  return contract.FlaxModel(TransformerLM(cfg))


def count_params(cfg: TransformerConfig) -> dict[str, int]:
  """Parameter counts: total, embedding (input table and untied head), non-embedding."""
  attn = cfg.d_model * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
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
