"""Reading and writing Hugging Face safetensors checkpoints of the Llama family.

A checkpoint directory holds `config.json` and either `model.safetensors` or
shards listed by `model.safetensors.index.json` ({"weight_map": {tensor: file}}).
The names, shapes and layout transforms are `models.hf_llama`'s; this module
does the I/O and the placement on a mesh.

`load_hf(path, mesh, rules)`: tensors are read lazily with safetensors'
`safe_open(framework="numpy")` and each parameter is created with
`jax.make_array_from_callback` straight in its NamedSharding (the model's
logical axes mapped by `rules`, exactly as the train state's are). The
callback receives the index of one device's block of OUR array; because every
map is a transpose and/or a (heads, head_dim) split of one axis, that block
comes from one rectangular block of the HF tensor (`TensorMap.hf_index`), read
with `f.get_slice(name)[hf_index]` and transformed (`TensorMap.from_hf_block`).
So a host only ever holds the blocks its devices need, never a full copy of
the model (replicated blocks are read once per parameter and reused). All
names and shapes are checked before any data is read: a missing, unexpected
or misshapen tensor is an error naming it (rotary `inv_freq` buffers are
skipped; so is `lm_head.weight` of a tied model, which transformers also
replaces by the embedding).

`save_hf(path, cfg, params)` writes config.json and the tensors, one tensor
gathered to the host at a time and streamed into its file (the safetensors
layout is written here: an 8-byte little-endian header length, the JSON
header with each tensor's dtype, shape and byte range, then the raw bytes),
so host memory holds one tensor, not the model. Checkpoints larger than
`max_shard_bytes` are split into model-0000k-of-0000n.safetensors files plus
the index. Every file is written atomically (`framework.files.atomic_open`),
config.json last; model*.safetensors / index files of an earlier export in the
same directory that this export does not use are removed, so a loader never
mixes two exports.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors needs)
import numpy as np
from safetensors import safe_open

from framework import files
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from models import contract
from models import hf_llama
from models import transformer

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3   # transformers' save_pretrained default (5 GB)

_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
              "int32": "I32", "int64": "I64", "int16": "I16", "int8": "I8", "uint8": "U8",
              "bool": "BOOL"}

HFConfigError = hf_llama.HFConfigError
HFTensorError = hf_llama.HFTensorError


# ------------------------------------------------------------------ reading

def read_hf_config(path: str) -> dict[str, Any]:
  """The parsed `config.json` of checkpoint directory `path`."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Hugging Face checkpoint directory {path!r} does not exist")
  cfg_path = os.path.join(path, CONFIG)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found (a Hugging Face checkpoint needs "
                            f"{CONFIG})")
  try:
    with open(cfg_path, encoding="utf-8") as f:
      hf = json.load(f)
  except ValueError as err:
    raise HFConfigError(f"{cfg_path}: not valid JSON: {err}") from None
  if not isinstance(hf, dict):
    raise HFConfigError(f"{cfg_path}: not a JSON object")
  return hf


def hf_config(path: str) -> transformer.TransformerConfig:
  """`TransformerConfig` of the checkpoint at `path` (errors name path and field)."""
  hf = read_hf_config(path)
  try:
    return hf_llama.config_from_hf(hf)
  except HFConfigError as err:
    raise HFConfigError(f"{os.path.join(path, CONFIG)}: "
                        f"{str(err).removeprefix('config.json: ')}") from None


def tensor_files(path: str) -> dict[str, str]:
  """{tensor name: file} from the index, or every tensor of model.safetensors."""
  index_path = os.path.join(path, INDEX)
  if os.path.isfile(index_path):
    try:
      with open(index_path, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
      raise HFTensorError(f"{index_path}: no readable weight_map ({err})") from None
    return {str(name): os.path.join(path, str(file)) for name, file in weight_map.items()}
  single = os.path.join(path, SINGLE)
  if not os.path.isfile(single):
    raise FileNotFoundError(f"{path} has neither {SINGLE} nor {INDEX}")
  with safe_open(single, framework="numpy") as f:
    return {name: single for name in f.keys()}


class _Reader:
  """Open safetensors files of one checkpoint; shapes and sliced reads by tensor name."""

  def __init__(self, path: str, stack: contextlib.ExitStack):
    self.where = tensor_files(path)
    self._open: dict[str, Any] = {}
    for file in sorted(set(self.where.values())):
      if not os.path.isfile(file):
        names = sorted(n for n, f in self.where.items() if f == file)
        raise FileNotFoundError(f"{file} (listed in {INDEX} for {names[0]}"
                                f"{' and others' if len(names) > 1 else ''}) not found")
      self._open[file] = stack.enter_context(safe_open(file, framework="numpy"))
    for name, file in self.where.items():
      if name not in self._open[file].keys():
        raise HFTensorError(f"tensor {name}: {INDEX} places it in {file}, which lacks it")

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open[self.where[name]].get_slice(name).get_shape())

  def read(self, name: str, index: Optional[tuple[slice, ...]] = None) -> np.ndarray:
    f = self._open[self.where[name]]
    return f.get_tensor(name) if index is None else f.get_slice(name)[index]


def check_tensors(cfg: transformer.TransformerConfig, reader: _Reader, where: str
                  ) -> dict[str, hf_llama.TensorMap]:
  """The maps of `cfg` after checking names and shapes against the files."""
  maps = hf_llama.hf_to_ours(cfg)
  wanted = {m.hf_name for m in maps.values()}
  present = set(reader.where)
  missing = sorted(wanted - present)
  extra = sorted(n for n in present - wanted if not hf_llama.is_ignored(n))
  if cfg.tie_embeddings and "lm_head.weight" in extra:
    logging.warning("%s: lm_head.weight ignored: tie_word_embeddings=true ties the output "
                    "head to model.embed_tokens.weight", where)
    extra.remove("lm_head.weight")
  if missing:
    raise HFTensorError(f"{where}: missing tensor(s) {', '.join(missing)}")
  if extra:
    raise HFTensorError(f"{where}: unexpected tensor(s) {', '.join(extra)} (not part of a "
                        f"{'tied' if cfg.tie_embeddings else 'untied'} "
                        f"{'Qwen2' if cfg.qkv_bias else 'Llama/Mistral'} model of this config)")
  for m in maps.values():
    try:
      m.check_hf_shape(reader.shape(m.hf_name))
    except HFTensorError as err:
      raise HFTensorError(f"{where}: {err}") from None
  return maps


def check_hf(path: str) -> transformer.TransformerConfig:
  """The checkpoint's config after checking its tensor names and shapes (reads no data)."""
  cfg = hf_config(path)
  with contextlib.ExitStack() as stack:
    check_tensors(cfg, _Reader(path, stack), path)
  return cfg


def _example_batch() -> dict[str, np.ndarray]:
  z = np.zeros((1, 2), np.int32)
  return {"inputs": z, "targets": z, "weights": z}


def param_shardings(cfg: transformer.TransformerConfig, mesh: jax.sharding.Mesh,
                    rules: Any = None) -> tuple[Any, Any]:
  """(abstract params, NamedShardings) of the transformer, as the train state has them."""
  model = contract.FlaxModel(transformer.TransformerLM(cfg))
  rules = sharding_lib.DEFAULT_RULES if rules is None else rules
  return train_state_lib.param_shardings(model, jax.random.PRNGKey(0), _example_batch(),
                                         mesh, rules)


def _block_reader(reader: _Reader, m: hf_llama.TensorMap, dtype: Any):
  """make_array_from_callback's callback for `m`, reading each distinct block once."""
  cache: dict[tuple, np.ndarray] = {}

  def callback(index):
    key = tuple((s.start, s.stop) for s in hf_llama.normalize_index(index, m.shape))
    if key not in cache:
      block = reader.read(m.hf_name, m.hf_index(index))
      cache[key] = m.from_hf_block(block, index).astype(dtype, copy=False)
    return cache[key]
  return callback


def load_hf(path: str, mesh: Optional[jax.sharding.Mesh] = None, rules: Any = None,
            dtype: Any = None, shardings: Any = None
            ) -> tuple[transformer.TransformerConfig, dict[str, Any]]:
  """(config, params) of the checkpoint at `path`.

  Without a mesh, params are whole arrays on the default device. With `mesh`
  (and `rules`, default `sharding.DEFAULT_RULES`), or with `shardings` (a tree
  like the params, e.g. the train state's), each param is created in its
  sharding from the blocks each device needs. `dtype` (default the config's
  param_dtype, float32) is the params' dtype and becomes the returned
  config's `param_dtype`.
  """
  cfg = hf_config(path)
  if dtype is not None:
    cfg = dataclasses.replace(cfg, param_dtype=dtype)
  dtype = jnp.dtype(cfg.param_dtype)
  if mesh is not None and shardings is None:
    abstract, shardings = param_shardings(cfg, mesh, rules)
    flat_abstract = hf_llama.flatten(abstract)
    maps = hf_llama.hf_to_ours(cfg)
    if set(flat_abstract) != set(maps) or any(
        tuple(flat_abstract[p].shape) != maps[p].shape for p in maps):
      raise RuntimeError("models.hf_llama's tensor map does not match TransformerLM's params")
  flat_shardings = hf_llama.flatten(shardings) if shardings is not None else None
  out = {}
  with contextlib.ExitStack() as stack:
    reader = _Reader(path, stack)
    maps = check_tensors(cfg, reader, path)
    for p, m in maps.items():
      if flat_shardings is None:
        out[p] = jax.device_put(m.to_ours(reader.read(m.hf_name)).astype(dtype, copy=False))
      else:
        if p not in flat_shardings:
          raise ValueError(f"shardings has no entry for param {p}")
        out[p] = jax.make_array_from_callback(m.shape, flat_shardings[p],
                                              _block_reader(reader, m, dtype))
  return cfg, hf_llama.unflatten(out)


# ------------------------------------------------------------------ writing

def _host(x: Any) -> np.ndarray:
  """A param on this host, whole (gathered from every device / process)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


@dataclasses.dataclass
class _Entry:
  path: str
  m: hf_llama.TensorMap
  nbytes: int


def _plan_shards(entries: list[_Entry], max_shard_bytes: int) -> list[list[_Entry]]:
  """Consecutive tensors grouped greedily into files of at most max_shard_bytes
  (a bigger tensor gets a file of its own)."""
  shards: list[list[_Entry]] = [[]]
  size = 0
  for e in entries:
    if shards[-1] and size + e.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += e.nbytes
  return shards


def _header(shard: list[_Entry], st_dtype: str, metadata: Mapping[str, str]) -> bytes:
  header: dict[str, Any] = {"__metadata__": dict(metadata)}
  offset = 0
  for e in shard:
    header[e.m.hf_name] = {"dtype": st_dtype, "shape": list(e.m.hf_shape),
                           "data_offsets": [offset, offset + e.nbytes]}
    offset += e.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-len(raw) % 8)   # the data then starts 8-byte aligned
  return len(raw).to_bytes(8, "little") + raw


def _write_shard(file: str, shard: list[_Entry], flat: Mapping[str, Any], dtype: np.dtype,
                 st_dtype: str, write: bool) -> None:
  header = _header(shard, st_dtype, {"format": "pt"})
  with (files.atomic_open(file, "wb") if write else contextlib.nullcontext()) as f:
    if write:
      f.write(header)
    for e in shard:
      data = e.m.to_hf(_host(flat[e.path]).astype(dtype, copy=False))   # one tensor at a time
      if data.nbytes != e.nbytes:
        raise AssertionError(f"{e.m.hf_name}: {data.nbytes} bytes, planned {e.nbytes}")
      if write:
        f.write(memoryview(data.reshape(-1).view(np.uint8)))
      del data


def save_hf(path: str, cfg: transformer.TransformerConfig, params: Mapping[str, Any], *,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: Any = None,
            max_position_embeddings: int = 4096) -> list[str]:
  """Writes `params` of `cfg` as a Hugging Face checkpoint in `path`; returns the
  tensor files written. `dtype` (default: the params') is the stored dtype."""
  flat = hf_llama.flatten(params)
  maps = hf_llama.hf_to_ours(cfg)
  missing, extra = sorted(set(maps) - set(flat)), sorted(set(flat) - set(maps))
  if missing or extra:
    raise HFTensorError(f"params do not match the config: missing {missing}, "
                        f"unexpected {extra}")
  for p, m in maps.items():
    if tuple(np.shape(flat[p])) != m.shape:
      raise HFTensorError(f"param {p} has shape {list(np.shape(flat[p]))}, expected "
                          f"{list(m.shape)} (for {m.hf_name})")
  out_dtype = np.dtype(dtype if dtype is not None else flat["embedding"].dtype)
  if out_dtype.name not in _ST_DTYPES:
    raise ValueError(f"dtype {out_dtype} cannot be stored in safetensors here")
  entries = [_Entry(p, m, int(np.prod(m.hf_shape)) * out_dtype.itemsize)
             for p, m in maps.items()]
  shards = _plan_shards(entries, int(max_shard_bytes))
  n = len(shards)
  names = [SINGLE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                                   for k in range(n)]
  write = jax.process_index() == 0
  if write:
    os.makedirs(path, exist_ok=True)
  for name, shard in zip(names, shards):
    _write_shard(os.path.join(path, name), shard, flat, out_dtype, _ST_DTYPES[out_dtype.name],
                 write)
  if not write:
    return [os.path.join(path, name) for name in names]
  if n > 1:
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
             "weight_map": {e.m.hf_name: name for name, shard in zip(names, shards)
                            for e in shard}}
    files.write_text(os.path.join(path, INDEX), json.dumps(index, indent=2) + "\n")
  for stale in sorted(os.listdir(path)):
    if ((stale.startswith("model") and stale.endswith(".safetensors")) or stale == INDEX) \
        and stale not in names and not (stale == INDEX and n > 1):
      os.remove(os.path.join(path, stale))
  hf = hf_llama.config_to_hf(cfg, max_position_embeddings=max_position_embeddings,
                             torch_dtype=out_dtype.name)
  files.write_text(os.path.join(path, CONFIG), json.dumps(hf, indent=2, sort_keys=True) + "\n")
  return [os.path.join(path, name) for name in names]

