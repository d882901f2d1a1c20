"""Hugging Face Llama-family checkpoints <-> `models.transformer` params (pure maps, no I/O).

Covers the decoders that share Llama's layout: Llama 2/3 (and the SmolLM /
TinyLlama shapes), Mistral (sliding window) and Qwen2 (q/k/v biases).

Config (`config.json` as a dict) -> `TransformerConfig`:
  hidden_size -> d_model, num_hidden_layers -> num_layers, num_attention_heads
  -> num_heads, num_key_value_heads -> num_kv_heads (default: num_heads),
  head_dim (default hidden_size / num_attention_heads), intermediate_size ->
  d_ff, rms_norm_eps -> norm_eps, tie_word_embeddings -> tie_embeddings,
  RoPE theta and scaling from either layout transformers writes:
    5.x  "rope_parameters": {"rope_theta", "rope_type", "factor", ...}
    4.x  top-level "rope_theta" and "rope_scaling": {"rope_type" (or the
         legacy "type"), "factor", ...} or null,
  Mistral's sliding_window (W: query t sees keys t - W < s <= t), Qwen2's
  q/k/v biases. HF's tied head computes logits = h E^T with no 1/sqrt(d), so
  imports set `scale_tied_logits=False`.

Tensors. HF `nn.Linear` stores W as [out, in] (y = x W^T + b); ours keep the
input axis first and split heads out:
  model.embed_tokens.weight      [V, d]        embedding              [V, d]
  lm_head.weight (untied only)   [V, d]        lm_head                [d, V]     (transpose)
  ...self_attn.q_proj.weight     [H hd, d]     layer_i/attn/wq        [d, H, hd]
  ...self_attn.k_proj.weight     [K hd, d]     layer_i/attn/wk        [d, K, hd]
  ...self_attn.v_proj.weight     [K hd, d]     layer_i/attn/wv        [d, K, hd]
  ...self_attn.o_proj.weight     [d, H hd]     layer_i/attn/wo        [H, hd, d]
  ...self_attn.{q,k,v}_proj.bias [H hd]/[K hd] layer_i/attn/b{q,k,v}  [H, hd]/[K, hd] (Qwen2)
  ...mlp.gate_proj.weight        [f, d]        layer_i/mlp/w_gate     [d, f]     (transpose)
  ...mlp.up_proj.weight          [f, d]        layer_i/mlp/w_up       [d, f]     (transpose)
  ...mlp.down_proj.weight        [d, f]        layer_i/mlp/w_down     [f, d]     (transpose)
  ...input_layernorm.weight      [d]           layer_i/attn_norm/scale
  ...post_attention_layernorm.weight [d]       layer_i/mlp_norm/scale
  model.norm.weight              [d]           final_norm/scale
(`...` = model.layers.{i}). Row r of q_proj is head r // hd, dimension r % hd.

RoPE: NO permutation of q/k. transformers' Llama rotates halves (dimension i
pairs with i + hd/2, `rotate_half`), and so does `models.transformer.rope`.
Meta's original (consolidated.*.pth) checkpoints pair interleaved dimensions
(2i, 2i+1); HF's conversion script permutes the q/k rows into the halves
order, so HF-format weights are already in our convention. (Importing Meta's
originals would need that permutation; they are not supported here.)

Sliced reads. Every map is a transpose and/or a split of one axis into
(heads, head_dim), so the block of our array at an index (one slice per axis)
comes from ONE rectangular block of the HF array: `TensorMap.hf_index` gives
it and `TensorMap.from_hf_block` turns that block into ours. A loader can thus
read only the part of each tensor a device holds (a head-axis slice h0:h1
reads rows h0*hd : h1*hd; a head_dim slice is taken after the read, from
whole heads). `to_ours(x)` is the same code on the full index.

Export of a model with `scale_tied_logits=True` (our default for tied
embeddings) folds the 1/sqrt(d) into the final norm's scale, which HF's tied
head then reproduces: logits = (h * g / sqrt(d)) E^T. Import of that export
gives `scale_tied_logits=False` and the folded scale (same logits up to
float32 rounding); every other param round-trips bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from models.transformer import TransformerConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}
# Buffers some checkpoints carry that are recomputed from the config.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Defaults transformers applies when a key is absent (identical across the three types).
_HF_DEFAULTS = dict(rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                    hidden_act="silu")


class HFConfigError(ValueError):
  """config.json asks for something this importer does not support; names the field."""


class HFTensorError(ValueError):
  """A checkpoint tensor is missing, unexpected or of the wrong shape; names it."""


# ------------------------------------------------------------------- config

def _get(hf: Mapping[str, Any], key: str, default: Any = None, required: bool = False) -> Any:
  value = hf.get(key)
  if value is None:
    if required:
      raise HFConfigError(f"config.json: field {key!r} is missing")
    return default
  return value


def _int(hf: Mapping[str, Any], key: str, default: Any = None) -> int:
  value = _get(hf, key, default, required=default is None)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
      or value <= 0:
    raise HFConfigError(f"config.json: {key}={value!r} must be a positive integer")
  return int(value)


def _rope(hf: Mapping[str, Any]) -> dict[str, Any]:
  """RoPE fields of TransformerConfig from either config layout."""
  if isinstance(hf.get("rope_parameters"), Mapping):
    where, rope = "rope_parameters", dict(hf["rope_parameters"])
    theta = rope.get("rope_theta", hf.get("rope_theta"))
  else:
    where, rope = "rope_scaling", dict(hf.get("rope_scaling") or {})
    theta = hf.get("rope_theta")
  theta = float(_HF_DEFAULTS["rope_theta"] if theta is None else theta)
  kind_key = "rope_type" if "rope_type" in rope else "type"
  kind = rope.get(kind_key) or "default"
  for source, name in ((rope, f"{where}.partial_rotary_factor"),
                       (hf, "partial_rotary_factor")):
    if float(source.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
      raise HFConfigError(f"config.json: {name}={source['partial_rotary_factor']!r} is not "
                          "supported (RoPE on the whole head only)")
  out: dict[str, Any] = dict(rope_theta=theta)
  if kind == "default":
    return out
  if kind not in ("linear", "llama3"):
    raise HFConfigError(f"config.json: {where}.{kind_key}={kind!r} is not supported; "
                        "supported RoPE types: default, linear, llama3")

  def need(key: str) -> float:
    if rope.get(key) is None:
      raise HFConfigError(f"config.json: {where}.{key} is missing for rope type {kind!r}")
    return rope[key]

  out.update(rope_scaling=kind, rope_scaling_factor=float(need("factor")))
  if kind == "llama3":
    out.update(rope_low_freq_factor=float(need("low_freq_factor")),
               rope_high_freq_factor=float(need("high_freq_factor")),
               rope_original_max_len=int(need("original_max_position_embeddings")))
  return out


def _sliding_window(hf: Mapping[str, Any], model_type: str, num_layers: int) -> int:
  """One window for every layer, or 0; mixed per-layer attention is an error."""
  if model_type == "qwen2":
    window = _get(hf, "sliding_window") if hf.get("use_sliding_window", False) else None
    if hf.get("layer_types") is None and window is not None:
      first = int(hf.get("max_window_layers", 28))
      if 0 < first < num_layers:
        raise HFConfigError(
            f"config.json: use_sliding_window=true with max_window_layers={first} < "
            f"num_hidden_layers={num_layers} mixes full and sliding attention layers; "
            "only one kind for all layers is supported")
      window = window if first <= 0 else None
  elif model_type == "mistral":
    window = hf.get("sliding_window", 4096)   # transformers' default when absent
  else:
    window = None
  types = hf.get("layer_types")
  if types is not None:
    kinds = set(types)
    if not kinds <= {"full_attention", "sliding_attention"}:
      raise HFConfigError(f"config.json: layer_types has unsupported entries {sorted(kinds)}")
    if len(kinds) > 1:
      raise HFConfigError("config.json: layer_types mixes full_attention and "
                          "sliding_attention layers; only one kind for all layers is supported")
    if kinds == {"full_attention"}:
      window = None
    elif window is None:
      raise HFConfigError("config.json: layer_types asks for sliding_attention but "
                          "sliding_window is not set")
  if window is None:
    return 0
  if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
    raise HFConfigError(f"config.json: sliding_window={window!r} must be a positive integer "
                        "or null")
  return int(window)


def config_from_hf(hf: Mapping[str, Any]) -> TransformerConfig:
  """`TransformerConfig` of a Llama / Mistral / Qwen2 `config.json` (see module doc)."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise HFConfigError(f"config.json: model_type={model_type!r} is not supported; "
                        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  act = _get(hf, "hidden_act", _HF_DEFAULTS["hidden_act"])
  if act != "silu":
    raise HFConfigError(f"config.json: hidden_act={act!r} is not supported (only silu: SwiGLU)")
  if hf.get("mlp_bias"):
    raise HFConfigError("config.json: mlp_bias=true is not supported (no MLP biases)")
  if model_type == "llama" and hf.get("attention_bias"):
    raise HFConfigError("config.json: attention_bias=true puts a bias on o_proj, which is "
                        "not supported (only Qwen2-style q/k/v biases)")
  d = _int(hf, "hidden_size")
  heads = _int(hf, "num_attention_heads")
  kv_heads = _int(hf, "num_key_value_heads", heads)
  if hf.get("head_dim") is None and d % heads:
    raise HFConfigError(f"config.json: hidden_size={d} is not divisible by "
                        f"num_attention_heads={heads} and head_dim is not given")
  head_dim = _int(hf, "head_dim", d // heads)
  if heads % kv_heads:
    raise HFConfigError(f"config.json: num_attention_heads={heads} is not a multiple of "
                        f"num_key_value_heads={kv_heads}")
  if head_dim % 2:
    raise HFConfigError(f"config.json: head_dim={head_dim} must be even for RoPE")
  layers = _int(hf, "num_hidden_layers")
  tie = _get(hf, "tie_word_embeddings", _HF_DEFAULTS["tie_word_embeddings"])
  eps = _get(hf, "rms_norm_eps", _HF_DEFAULTS["rms_norm_eps"])
  return TransformerConfig(
      vocab_size=_int(hf, "vocab_size"), d_model=d, num_layers=layers, num_heads=heads,
      num_kv_heads=kv_heads, head_dim=head_dim, d_ff=_int(hf, "intermediate_size"),
      tie_embeddings=bool(tie), norm_eps=float(eps), qkv_bias=model_type == "qwen2",
      scale_tied_logits=False, sliding_window=_sliding_window(hf, model_type, layers),
      **_rope(hf))


def config_to_hf(cfg: TransformerConfig, *, max_position_embeddings: int = 4096,
                 torch_dtype: str = "float32") -> dict[str, Any]:
  """A `config.json` dict for `cfg`: qwen2 when it has q/k/v biases, else mistral when
  it has a sliding window, else llama. RoPE goes in the 4.x layout (top-level
  rope_theta + rope_scaling), which transformers 4.x and 5.x both read."""
  if cfg.qkv_bias:
    model_type = "qwen2"
  elif cfg.sliding_window:
    model_type = "mistral"
  else:
    model_type = "llama"
  out: dict[str, Any] = dict(
      architectures=[ARCHITECTURES[model_type]], model_type=model_type,
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
      rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
      max_position_embeddings=int(max_position_embeddings), rope_theta=float(cfg.rope_theta),
      rope_scaling=None, attention_dropout=0.0, initializer_range=0.02, use_cache=True,
      torch_dtype=torch_dtype)
  if cfg.rope_scaling == "linear":
    out["rope_scaling"] = {"rope_type": "linear", "factor": float(cfg.rope_scaling_factor)}
  elif cfg.rope_scaling == "llama3":
    out["rope_scaling"] = {
        "rope_type": "llama3", "factor": float(cfg.rope_scaling_factor),
        "low_freq_factor": float(cfg.rope_low_freq_factor),
        "high_freq_factor": float(cfg.rope_high_freq_factor),
        "original_max_position_embeddings": int(cfg.rope_original_max_len)}
  if model_type == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  elif model_type == "mistral":
    out.update(sliding_window=int(cfg.sliding_window))
  else:
    window = int(cfg.sliding_window) or None
    out.update(use_sliding_window=window is not None, sliding_window=window,
               max_window_layers=0 if window else cfg.num_layers)
  return out


# ------------------------------------------------------------------ tensors

Index = tuple[slice, ...]


def normalize_index(index: Any, shape: tuple[int, ...]) -> Index:
  """A device's index (slices, maybe open-ended) as concrete unit-step slices."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
  out = []
  for s, n in zip(index, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"only unit-step slices are supported, got {s}")
    out.append(slice(start, stop))
  return tuple(out)


def _head_rows(s: slice, head_dim: int) -> slice:
  return slice(s.start * head_dim, s.stop * head_dim)


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One of our params and the HF tensor it comes from.

  layout: same | transpose | heads_in ([H hd, d] -> [d, H, hd]) |
  heads_out ([d, H hd] -> [H, hd, d]) | heads_bias ([H hd] -> [H, hd]).
  `scale` (only the final norm of a scaled tied head): ours = scale * HF.
  """
  path: str
  hf_name: str
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  layout: str
  scale: float = 1.0

  def check_hf_shape(self, hf_shape: tuple[int, ...]) -> None:
    if tuple(hf_shape) != self.hf_shape:
      raise HFTensorError(f"tensor {self.hf_name} has shape {list(hf_shape)}, expected "
                          f"{list(self.hf_shape)} (for {self.path} {list(self.shape)})")

  def hf_index(self, index: Any) -> Index:
    """The block of the HF tensor that our block at `index` is made from."""
    idx = normalize_index(index, self.shape)
    if self.layout == "same":
      return idx
    if self.layout == "transpose":
      return (idx[1], idx[0])
    if self.layout == "heads_in":     # ours (d, H, hd)
      return (_head_rows(idx[1], self.shape[2]), idx[0])
    if self.layout == "heads_out":    # ours (H, hd, d)
      return (idx[2], _head_rows(idx[0], self.shape[1]))
    if self.layout == "heads_bias":   # ours (H, hd)
      return (_head_rows(idx[0], self.shape[1]),)
    raise ValueError(f"unknown layout {self.layout!r}")

  def from_hf_block(self, block: np.ndarray, index: Any) -> np.ndarray:
    """Our block at `index` from the HF block read at `hf_index(index)`."""
    idx = normalize_index(index, self.shape)
    block = np.asarray(block)
    if self.layout == "same":
      out = block
    elif self.layout == "transpose":
      out = block.T
    elif self.layout == "heads_in":
      hd = self.shape[2]
      out = block.reshape(-1, hd, block.shape[1])[:, idx[2], :].transpose(2, 0, 1)
    elif self.layout == "heads_out":
      hd = self.shape[1]
      out = block.T.reshape(-1, hd, block.shape[0])[:, idx[1], :]
    elif self.layout == "heads_bias":
      out = block.reshape(-1, self.shape[1])[:, idx[1]]
    else:
      raise ValueError(f"unknown layout {self.layout!r}")
    if self.scale != 1.0:
      out = out * np.asarray(self.scale, out.dtype)
    return np.ascontiguousarray(out)

  def to_ours(self, hf: np.ndarray) -> np.ndarray:
    """HF array -> our array (checks the shape first)."""
    self.check_hf_shape(np.shape(hf))
    full = tuple(slice(None) for _ in self.shape)
    return self.from_hf_block(np.asarray(hf)[self.hf_index(full)], full)

  def to_hf(self, ours: np.ndarray) -> np.ndarray:
    """Our array -> the HF array (contiguous, ready to write)."""
    ours = np.asarray(ours)
    if tuple(ours.shape) != self.shape:
      raise HFTensorError(f"param {self.path} has shape {list(ours.shape)}, expected "
                          f"{list(self.shape)} (for {self.hf_name})")
    if self.layout in ("same", "heads_bias"):
      out = ours.reshape(self.hf_shape)
    elif self.layout == "transpose":
      out = ours.T
    elif self.layout == "heads_in":
      out = ours.reshape(self.shape[0], -1).T
    elif self.layout == "heads_out":
      out = ours.reshape(-1, self.shape[2]).T
    else:
      raise ValueError(f"unknown layout {self.layout!r}")
    if self.scale != 1.0:
      out = out / np.asarray(self.scale, out.dtype)
    return np.ascontiguousarray(out)


def hf_to_ours(cfg: TransformerConfig) -> dict[str, TensorMap]:
  """Our param path ("layer_0/attn/wq") -> its `TensorMap`, in HF's usual tensor order."""
  if getattr(cfg, "scan_layers", False):
    raise HFConfigError("model.scan_layers=True stacks the layers; HF checkpoints map to the "
                        "unrolled layout (layer_0 .. layer_{L-1}): set model.scan_layers=False")
  d, v, f = cfg.d_model, cfg.vocab_size, cfg.d_ff
  h, k, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  maps: dict[str, TensorMap] = {}

  def add(path: str, hf_name: str, hf_shape, shape, layout: str, scale: float = 1.0):
    maps[path] = TensorMap(path, hf_name, tuple(hf_shape), tuple(shape), layout, scale)

  add("embedding", "model.embed_tokens.weight", (v, d), (v, d), "same")
  for i in range(cfg.num_layers):
    p, n = f"layer_{i}", f"model.layers.{i}"
    add(f"{p}/attn_norm/scale", f"{n}.input_layernorm.weight", (d,), (d,), "same")
    add(f"{p}/attn/wq", f"{n}.self_attn.q_proj.weight", (h * hd, d), (d, h, hd), "heads_in")
    add(f"{p}/attn/wk", f"{n}.self_attn.k_proj.weight", (k * hd, d), (d, k, hd), "heads_in")
    add(f"{p}/attn/wv", f"{n}.self_attn.v_proj.weight", (k * hd, d), (d, k, hd), "heads_in")
    if cfg.qkv_bias:
      add(f"{p}/attn/bq", f"{n}.self_attn.q_proj.bias", (h * hd,), (h, hd), "heads_bias")
      add(f"{p}/attn/bk", f"{n}.self_attn.k_proj.bias", (k * hd,), (k, hd), "heads_bias")
      add(f"{p}/attn/bv", f"{n}.self_attn.v_proj.bias", (k * hd,), (k, hd), "heads_bias")
    add(f"{p}/attn/wo", f"{n}.self_attn.o_proj.weight", (d, h * hd), (h, hd, d), "heads_out")
    add(f"{p}/mlp_norm/scale", f"{n}.post_attention_layernorm.weight", (d,), (d,), "same")
    add(f"{p}/mlp/w_gate", f"{n}.mlp.gate_proj.weight", (f, d), (d, f), "transpose")
    add(f"{p}/mlp/w_up", f"{n}.mlp.up_proj.weight", (f, d), (d, f), "transpose")
    add(f"{p}/mlp/w_down", f"{n}.mlp.down_proj.weight", (d, f), (f, d), "transpose")
  scale = math.sqrt(d) if cfg.tie_embeddings and cfg.scale_tied_logits else 1.0
  add("final_norm/scale", "model.norm.weight", (d,), (d,), "same", scale)
  if not cfg.tie_embeddings:
    add("lm_head", "lm_head.weight", (v, d), (d, v), "transpose")
  return maps


def is_ignored(hf_name: str) -> bool:
  """Tensors a loader may skip: buffers recomputed from the config."""
  return hf_name.endswith(IGNORED_SUFFIXES)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"layer_0": {"attn": {"wq": x}}} -> {"layer_0/attn/wq": x}."""
  out: dict[str, Any] = {}
  for key, value in params.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten`."""
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


def params_from_hf(cfg: TransformerConfig, get: Callable[[str], np.ndarray]) -> dict[str, Any]:
  """Our param tree (numpy) from `get(hf_name) -> array`, checking every shape."""
  return unflatten({path: m.to_ours(get(m.hf_name)) for path, m in hf_to_ours(cfg).items()})


def params_to_hf(cfg: TransformerConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{hf_name: array} of our (host) params; every param must be present."""
  flat = flatten(params)
  maps = hf_to_ours(cfg)
  missing = sorted(set(maps) - set(flat))
  extra = sorted(set(flat) - set(maps))
  if missing or extra:
    raise HFTensorError(f"params do not match the config: missing {missing}, unexpected {extra}")
  return {m.hf_name: m.to_hf(np.asarray(flat[path])) for path, m in maps.items()}
