"""MatFormer: the transformer LM with nested FFNs (Kudugunta, Devvrit et al. 2023).

Every layer's SwiGLU FFN holds g nested granularities m_1 < m_2 < ... < m_g =
d_ff. Sub-model M_i uses the first m_i hidden units of every FFN,

  FFN_i(x) = (silu(x W_gate[:, :m_i]) * (x W_up[:, :m_i])) W_down[:m_i, :],

and shares everything else (embeddings, attention, norms) with the universal
model M_g. Training (`MatFormerConfig.mode`):

  joint:    L = sum_i w_i L(M_i) on the same batch (`loss_weights`, default 1/g),
  sampled:  one i ~ p per step (`sample_probs`, default uniform), L = L(M_i);
            i is drawn from fold_in(PRNGKey(sample_seed), step), so the model
            sets `uses_step` and the train step passes batch["step"]
            (every micro-batch of a step sees the same step, so the same i).

Mix'n'Match: a per-layer choice (m_(1), ..., m_(L)) of widths gives models
between the trained ones; `MatFormerLM(cfg, granularity=...)` runs any of them
(an int: the same width in every layer; a tuple: one width per layer; None:
the universal model). Widths are static, so a narrower model compiles to
narrower matmuls: real FLOP savings, not masks.

Storage layout (balanced prefixes under tensor parallelism). The `mlp` axis
(size d_ff) is stored as B = `interleave` blocks of d_ff / B units; stored
index p = b (d_ff / B) + l holds nested unit u = l B + b. The prefix of width
m (the first m nested units) is then, in every block, the local indices
l < m / B:

  W[:, :m]  :=  W.reshape(d, B, d_ff / B)[:, :, :m / B].reshape(d, m),

a static slice. Sharding the `mlp` axis S ways over `tensor` with S | B gives
shard s the blocks sB/S .. (s+1)B/S - 1, so it holds exactly m / S units of
every prefix and slices them locally (no communication). Every width must be
a multiple of B. An FFN is a sum over its hidden units, so their order does
not change the function: the universal model's parameters are a
`TransformerLM`'s, and `extract` turns any sub-model into plain `TransformerLM`
parameters (a `TransformerConfig` has one d_ff, so a Mix'n'Match model with
unequal widths is extracted at d_ff = max_l m_(l), each narrower layer
zero-padded: exact, and runnable by the plain LM code, the decoder and the
HF export; its real FLOPs are those of `MatFormerLM` at that granularity).

Decoding: `__call__` has the `TransformerLM` cache interface
(`tokens, cache=..., starts=... -> (logits, cache)`, cache from
`transformer.init_cache(cfg, ...)`), at the module's static granularity.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import contract
from models import registry
from models import transformer

Array = jax.Array
Granularity = int | Sequence[int] | None

MODES = ("joint", "sampled")


@dataclasses.dataclass(frozen=True)
class MatFormerConfig(transformer.TransformerConfig):
  """The transformer's fields plus the nested granularities and how to train them."""
  # Nested FFN widths, ascending, the last = d_ff. (): (d_ff/8, d_ff/4, d_ff/2, d_ff).
  granularities: tuple[int, ...] = ()
  mode: str = "joint"                    # joint | sampled
  loss_weights: tuple[float, ...] = ()   # joint: w_i (): 1/g each
  sample_probs: tuple[float, ...] = ()   # sampled: p_i (): uniform; normalised to sum 1
  sample_seed: int = 0
  interleave: int = 8                    # B: blocks of the mlp axis (tensor shards must divide it)

  def __post_init__(self):
    super().__post_init__()
    if self.scan_layers:
      raise ValueError("model.scan_layers=True is not supported by the MatFormer (its layers "
                       "are unrolled: Mix'n'Match picks a width per layer)")
    b, d_ff = self.interleave, self.d_ff
    if b < 1 or d_ff % b:
      raise ValueError(f"model.interleave={b} must be >= 1 and divide model.d_ff={d_ff}")
    grans = tuple(int(m) for m in self.granularities) or tuple(d_ff // k for k in (8, 4, 2, 1))
    if any(m % b or m <= 0 for m in grans):
      raise ValueError(f"model.granularities={grans}: every width must be a positive "
                       f"multiple of model.interleave={b}")
    if list(grans) != sorted(set(grans)) or grans[-1] != d_ff:
      raise ValueError(f"model.granularities={grans} must be strictly ascending and end "
                       f"with model.d_ff={d_ff} (the universal model)")
    object.__setattr__(self, "granularities", grans)
    if self.mode not in MODES:
      raise ValueError(f"model.mode={self.mode!r} must be one of {MODES}")
    g = len(grans)
    # Kept as given (so dataclasses.replace with other granularities works);
    # `weights` and `probs` resolve the defaults.
    for field in ("loss_weights", "sample_probs"):
      values = tuple(float(v) for v in getattr(self, field))
      if values and (len(values) != g or min(values) < 0 or sum(values) <= 0):
        raise ValueError(f"model.{field}={values} needs {g} non-negative values "
                         f"(one per granularity {grans}) with a positive sum")
      object.__setattr__(self, field, values)

  @property
  def weights(self) -> tuple[float, ...]:
    """Joint loss weights w_i (default 1/g each)."""
    g = len(self.granularities)
    return self.loss_weights or (1.0 / g,) * g

  @property
  def probs(self) -> tuple[float, ...]:
    """Sampling probabilities p_i (default uniform), normalised to sum 1."""
    values = self.sample_probs or (1.0,) * len(self.granularities)
    return tuple(v / sum(values) for v in values)


def plain_config(cfg: MatFormerConfig, d_ff: int) -> transformer.TransformerConfig:
  """The `TransformerConfig` with cfg's shared fields and FFN width d_ff."""
  fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(transformer.TransformerConfig)}
  return transformer.TransformerConfig(**dict(fields, d_ff=int(d_ff)))


def resolve_widths(cfg: MatFormerConfig, granularity: Granularity) -> tuple[int, ...]:
  """One FFN width per layer: None -> d_ff, an int -> the same everywhere."""
  if granularity is None:
    widths = (cfg.d_ff,) * cfg.num_layers
  elif isinstance(granularity, (int, np.integer)):
    widths = (int(granularity),) * cfg.num_layers
  else:
    widths = tuple(int(m) for m in granularity)
    if len(widths) != cfg.num_layers:
      raise ValueError(f"granularity {widths} has {len(widths)} per-layer widths; the model "
                       f"has num_layers={cfg.num_layers}")
  for m in widths:
    if not 0 < m <= cfg.d_ff or m % cfg.interleave:
      raise ValueError(f"granularity {widths}: width {m} must be in (0, d_ff={cfg.d_ff}] and "
                       f"a multiple of interleave={cfg.interleave}")
  return widths


def nested_prefix(w: Array, width: int, axis: int, blocks: int) -> Array:
  """The first `width` nested units of `w`'s `axis` (module docstring's layout)."""
  n = w.shape[axis]
  if width == n:
    return w
  split = w.shape[:axis] + (blocks, n // blocks) + w.shape[axis + 1:]
  w = jax.lax.slice_in_dim(w.reshape(split), 0, width // blocks, axis=axis + 1)
  return w.reshape(w.shape[:axis] + (width,) + w.shape[axis + 2:])


def nested_order(d_ff: int, blocks: int) -> np.ndarray:
  """order[u] = the stored index of nested unit u (u = l B + b -> b d_ff/B + l)."""
  u = np.arange(d_ff)
  return (u % blocks) * (d_ff // blocks) + u // blocks


class NestedSwiGLU(nn.Module):
  """SwiGLU on the first `width` nested hidden units; parameters as `transformer.SwiGLU`."""
  cfg: MatFormerConfig
  width: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    param = lambda name, shape, axes: self.param(
        name, nn.with_logical_partitioning(init, axes), shape, cfg.param_dtype)
    w_gate = param("w_gate", (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    w_up = param("w_up", (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    w_down = param("w_down", (cfg.d_ff, cfg.d_model), ("mlp", "embed"))
    b = cfg.interleave
    w_gate = nested_prefix(w_gate, self.width, 1, b).astype(cfg.dtype)
    w_up = nested_prefix(w_up, self.width, 1, b).astype(cfg.dtype)
    w_down = nested_prefix(w_down, self.width, 0, b).astype(cfg.dtype)
    x = x.astype(cfg.dtype)
    hidden = nn.silu(x @ w_gate) * (x @ w_up)
    hidden = nn.with_logical_constraint(
        hidden, ("activation_batch", "activation_length", "activation_mlp"))
    return hidden @ w_down


class NestedBlock(nn.Module):
  """`transformer.DecoderBlock` with a `NestedSwiGLU` of the given width."""
  cfg: MatFormerConfig
  width: int

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array,
               cache: dict[str, Array] | None = None, starts: Array | None = None):
    cfg = self.cfg
    norm = lambda name: transformer.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)
    attn = transformer.Attention(cfg, name="attn")(norm("attn_norm")(x), positions, segment_ids,
                                                   cache, starts)
    if cache is not None:
      attn, cache = attn
    x = x + attn
    x = x + NestedSwiGLU(cfg, self.width, name="mlp")(norm("mlp_norm")(x))
    x = nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))
    return x if cache is None else (x, cache)


class MatFormerLM(nn.Module):
  """The nested LM; `granularity` is the static sub-model `__call__` runs by default."""
  cfg: MatFormerConfig
  granularity: Any = None   # None | int | tuple of per-layer widths

  @nn.compact
  def __call__(self, tokens: Array, positions: Array | None = None,
               segment_ids: Array | None = None, cache: dict[str, Any] | None = None,
               starts: Array | None = None, granularity: Granularity = None):
    """Logits [B, T, vocab] (fp32) of the sub-model `granularity` (default: the
    module's); with `cache`, (logits, updated cache), as `TransformerLM`."""
    cfg = self.cfg
    widths = resolve_widths(cfg, self.granularity if granularity is None else granularity)
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
    embedding = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vocab", "embed")), (cfg.vocab_size, cfg.d_model),
                           cfg.param_dtype)
    x = jnp.take(embedding, tokens, axis=0).astype(cfg.dtype)
    x = nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))
    block = NestedBlock
    if cfg.remat != "none" and cache is None:
      block = nn.remat(NestedBlock, policy=transformer.REMAT_POLICIES[cfg.remat])
    new_cache = {}
    for i, width in enumerate(widths):
      name = f"layer_{i}"
      if cache is None:
        x = block(cfg, width, name=name)(x, positions, segment_ids)
      else:
        x, new_cache[name] = block(cfg, width, name=name)(x, positions, segment_ids,
                                                          cache[name], starts)
    x = transformer.RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    if cfg.tie_embeddings:
      logits = x @ embedding.astype(cfg.dtype).T
      if cfg.scale_tied_logits:
        logits = logits / jnp.sqrt(float(cfg.d_model)).astype(cfg.dtype)
    else:
      head = self.param("lm_head", nn.with_logical_partitioning(
          nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
          ("embed", "vocab")), (cfg.d_model, cfg.vocab_size), cfg.param_dtype)
      logits = x @ head.astype(cfg.dtype)
    logits = nn.with_logical_constraint(
        logits.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab"))
    return logits if cache is None else (logits, new_cache)

  def granularity_sums(self, batch: Mapping[str, Array], granularity: Granularity
                       ) -> dict[str, Array]:
    """`transformer.lm_loss_sums` of one sub-model on `batch`."""
    logits = self(batch["inputs"], batch.get("positions"), batch.get("segment_ids"),
                  granularity=granularity)
    return transformer.lm_loss_sums(logits, batch["targets"], batch["weights"])

  def loss(self, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Sums: "loss" = sum_i w_i loss_i (joint), or the sampled granularity's loss
    when batch has "step" (sampled; without a step: sum_i p_i loss_i, the
    objective's expectation, for evaluation), with "tokens", and per
    granularity m "loss_ffn{m}" / "accuracy_ffn{m}" whenever all are computed.

    A module with a fixed `granularity` is a single model: its own loss only.
    """
    cfg = self.cfg
    if self.granularity is not None:
      return self.granularity_sums(batch, self.granularity)
    grans = cfg.granularities
    if cfg.mode == "sampled" and "step" in batch:
      key = jax.random.fold_in(jax.random.PRNGKey(cfg.sample_seed), batch["step"])
      index = jax.random.choice(key, len(grans), p=jnp.asarray(cfg.probs))
      if self.is_initializing():   # every branch must see initialised parameters
        self.granularity_sums(batch, None)
      branches = [lambda mdl, b, m=m: mdl.granularity_sums(b, m) for m in grans]
      sums = nn.switch(index, branches, self, batch)
      width = jnp.asarray(grans, jnp.float32)[index]
      return dict(sums, ffn_width=width * sums["tokens"])
    weights = cfg.weights if cfg.mode == "joint" else cfg.probs
    out: dict[str, Array] = {}
    total = 0.0
    for m, w in zip(grans, weights):
      sums = self.granularity_sums(batch, m)
      total = total + w * sums["loss"]
      out[f"loss_ffn{m}"] = sums["loss"]
      out[f"accuracy_ffn{m}"] = sums["accuracy"]
      out["tokens"] = sums["tokens"]
    out["loss"] = total
    out["accuracy"] = out[f"accuracy_ffn{grans[-1]}"]
    return out

  def consistency(self, batch: Mapping[str, Array], granularity: Granularity
                  ) -> dict[str, Array]:
    """`consistency_sums` of the sub-model `granularity` against the universal model."""
    args = (batch["inputs"], batch.get("positions"), batch.get("segment_ids"))
    return consistency_sums(self(*args, granularity=granularity),
                            self(*args, granularity=self.cfg.d_ff), batch["weights"])


def consistency_sums(sub_logits: Array, ref_logits: Array, weights: Array) -> dict[str, Array]:
  """Consistency of a sub-model q with a reference p (the universal model), summed
  over the weighted positions t (sums, like the loss):

    agree = sum_t w_t [argmax_v q_t(v) = argmax_v p_t(v)]   (greedy-token agreement)
    kl    = sum_t w_t KL(p_t || q_t) = sum_t w_t sum_v p_t(v) (log p_t(v) - log q_t(v))
    kl_reverse = sum_t w_t KL(q_t || p_t)

  with "tokens" = sum_t w_t; divide by it for the means.
  """
  logp = jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(sub_logits.astype(jnp.float32), axis=-1)
  weights = weights.astype(jnp.float32)
  kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  kl_reverse = jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)
  agree = (jnp.argmax(sub_logits, -1) == jnp.argmax(ref_logits, -1)).astype(jnp.float32)
  return {"agree": jnp.sum(agree * weights), "kl": jnp.sum(kl * weights),
          "kl_reverse": jnp.sum(kl_reverse * weights), "tokens": jnp.sum(weights)}


class MatFormerModel(contract.FlaxModel):
  """`FlaxModel` that asks for batch["step"] when it samples a granularity per step."""

  @property
  def uses_step(self) -> bool:
    return self.module.granularity is None and self.module.cfg.mode == "sampled"


@registry.register("matformer", MatFormerConfig)
def build(cfg: MatFormerConfig) -> MatFormerModel:
  return MatFormerModel(MatFormerLM(cfg))


def _plain_array(x: Any) -> Any:
  return x.unbox() if isinstance(x, nn.LogicallyPartitioned) else x


def extract(params: Mapping[str, Any], cfg: MatFormerConfig, granularity: Granularity
            ) -> tuple[dict[str, Any], transformer.TransformerConfig]:
  """A standalone `TransformerLM` (params, config) equal to the sub-model `granularity`.

  Uniform widths m: d_ff = m and every FFN holds its first m nested units, in
  nested order. Per-layer widths: d_ff = max width, narrower layers padded
  with zero units (silu(0) * 0 = 0: the function is unchanged).
  """
  widths = resolve_widths(cfg, granularity)
  d_ff = max(widths)
  params = jax.tree.map(_plain_array, dict(params),
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for i in range(cfg.num_layers):
    if f"layer_{i}" not in params:
      raise ValueError(f"extract: params have no layer_{i} (cfg.num_layers={cfg.num_layers})")
  out = dict(params)
  b = cfg.interleave
  for i, m in enumerate(widths):
    layer = dict(params[f"layer_{i}"])
    mlp = dict(layer["mlp"])
    for name, axis in (("w_gate", 1), ("w_up", 1), ("w_down", 0)):
      w = jnp.asarray(mlp[name])
      if w.shape[axis] != cfg.d_ff:
        raise ValueError(f"extract: layer_{i}/mlp/{name} has shape {w.shape}; "
                         f"expected d_ff={cfg.d_ff} on axis {axis}")
      # Stored order -> nested order, so the plain LM's units are the prefix itself.
      w = jnp.take(nested_prefix(w, m, axis, b), nested_order(m, b), axis=axis)
      if m < d_ff:
        pad = [(0, 0)] * w.ndim
        pad[axis] = (0, d_ff - m)
        w = jnp.pad(w, pad)
      mlp[name] = w
    layer["mlp"] = mlp
    out[f"layer_{i}"] = layer
  return out, plain_config(cfg, d_ff)


def count_params(cfg: MatFormerConfig, granularity: Granularity = None) -> dict[str, int]:
  """`transformer.count_params` of the sub-model (its real, unpadded FFN units)."""
  widths = resolve_widths(cfg, granularity)
  counts = transformer.count_params(plain_config(cfg, 0))
  mlp = 3 * cfg.d_model * sum(widths)
  return {"total": counts["total"] + mlp, "embedding": counts["embedding"],
          "non_embedding": counts["non_embedding"] + mlp}


def flops_per_token(cfg: MatFormerConfig, seq_len: int, granularity: Granularity = None
                    ) -> float:
  """Training FLOPs per token of one sub-model (`transformer.flops_per_token`'s
  convention) or, with granularity None, of the training objective: the sum
  over granularities (joint) or its expectation (sampled)."""
  def one(g: Granularity) -> float:
    widths = resolve_widths(cfg, g)
    base = transformer.flops_per_token(plain_config(cfg, 0), seq_len)
    return base + 6.0 * 3 * cfg.d_model * sum(widths)
  if granularity is not None:
    return one(granularity)
  weights = (1.0,) * len(cfg.granularities) if cfg.mode == "joint" else cfg.probs
  return float(sum(w * one(m) for m, w in zip(cfg.granularities, weights)))
