"""Logical axis names -> mesh shardings.

Models name every weight axis logically (`embed`, `mlp`, `heads`, ...). The
config holds rules that map each logical name to a mesh axis (or None for
replicated), MaxText-style:

  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ...)

Helpers here turn an abstract (eval_shape'd) train state into NamedShardings,
so the state can be created directly in its sharded layout, and turn
host-local numpy batches into global sharded arrays.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, Any]]

# The one default: configs take these (`config.sharding.rules`) and override
# entries as needed.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_kv_heads", "tensor"),   # the decoding cache's kv heads
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # parameters: fsdp shards the model dimension, tensor the Megatron-style ones
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
)

BATCH_AXES = ("data", "fsdp")


def normalize_rules(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Accepts rules from a ConfigDict (lists) and returns hashable tuples."""
  out = []
  for item in rules:
    if len(item) != 2:
      raise ValueError(f"each sharding rule must be (logical_name, mesh_axes), got {item!r}")
    name, axes = item
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((str(name), axes))
  return tuple(out)


def _mesh_axes_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, where: str) -> P:
  """Drops mesh axes that do not divide their dimension (replicating it)."""
  fitted = []
  for dim, (size, axes) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape))):
    if axes is not None and size % _mesh_axes_size(mesh, axes):
      logging.warning("sharding: %s dim %d (size %d) is not divisible by mesh axes %s; "
                      "replicating that dimension", where, dim, size, axes)
      axes = None
    fitted.append(axes)
  return P(*fitted[:len(shape)])


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules,
                      logical_axes: Any = None) -> Any:
  """NamedShardings for a tree of (possibly `nn.LogicallyPartitioned`) leaves.

  Names come from the boxes, or from `logical_axes` (a tree of tuples of
  names, or None, one per leaf) for models whose parameters are plain arrays.
  """
  unboxed = nn.meta.unbox(abstract_boxed)
  if logical_axes is None:
    logical_specs = nn.get_partition_spec(abstract_boxed)
  else:
    logical_specs = jax.tree.map(lambda names: P(*names) if names is not None else None,
                                 logical_axes, is_leaf=lambda x: isinstance(x, tuple) or x is None)
  rules = normalize_rules(rules)

  def one(path, spec, leaf):
    mesh_spec = nn.logical_to_mesh_axes(spec, rules) if spec is not None else P()
    mesh_spec = _fit_spec(mesh_spec, leaf.shape, mesh, jax.tree_util.keystr(path))
    return NamedSharding(mesh, mesh_spec)

  return jax.tree_util.tree_map_with_path(
      one, logical_specs, unboxed,
      is_leaf=lambda x: isinstance(x, P) or x is None)


BLOCK_STATE_AXES = ("fsdp",)


def _mirrors(node: Any, params_def: Any) -> bool:
  """Whether `node` has the parameters' tree structure at its top (subtrees in
  place of the parameters: Adam's mu, Shampoo's per-parameter leaf states)."""
  try:
    params_def.flatten_up_to(node)
  except ValueError:
    return False
  return True


def follow_param_shardings(tree: Any, params: Any, param_shardings: Any,
                           mesh: Mesh, block_axes: Sequence[str] = BLOCK_STATE_AXES) -> Any:
  """Shardings for an optimizer state.

  Leaves that mirror a parameter take that parameter's sharding: inside any
  subtree of the state that has the parameters' tree structure (Adam's
  mu / nu, Shampoo's momentum and its per-parameter `ShampooLeafState`s,
  SOAP's leaf states), every leaf of a parameter's shape under that
  parameter's position (e.g. Shampoo's `leaves[p].nu`); elsewhere, leaves
  whose path ends with a parameter's path and have its shape. Stacked
  per-block statistics (ndim >= 3, e.g. Shampoo's (num_blocks, b, b) factors
  and roots, SOAP's bases) are split along their block axis over `block_axes`
  where it divides evenly, so that, as for FSDP parameters, each device holds
  and updates 1/n of them instead of a full copy (the ZeRO view of the
  optimizer state). Everything else (counts, scalars, small vectors) is
  replicated.
  """
  params_def = jax.tree.structure(params)
  param_shapes = [tuple(leaf.shape) for leaf in jax.tree.leaves(params)]
  param_sh = params_def.flatten_up_to(param_shardings)
  by_path = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    by_path[tuple(path)] = leaf.shape
  shard_by_path = {tuple(p): s for p, s in
                   jax.tree_util.tree_flatten_with_path(param_shardings)[0]}
  lengths = sorted({len(p) for p in by_path}, reverse=True)
  replicated = NamedSharding(mesh, P())
  axes = tuple(a for a in block_axes if mesh.shape.get(a, 1) > 1)
  ways = math.prod(mesh.shape[a] for a in axes)

  def other(shape):
    if axes and len(shape) >= 3 and shape[0] % ways == 0:
      return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))
    return replicated

  def under_param(sub, shape, sharding):
    return jax.tree.map(
        lambda x: sharding if tuple(getattr(x, "shape", ())) == shape
        else other(tuple(getattr(x, "shape", ()))), sub)

  def one(path, node):
    if _mirrors(node, params_def):
      subs = params_def.flatten_up_to(node)
      return params_def.unflatten([under_param(sub, shape, sh) for sub, shape, sh
                                   in zip(subs, param_shapes, param_sh)])
    path = tuple(path)
    shape = getattr(node, "shape", ())
    for k in lengths:
      if k <= len(path):
        suffix = path[len(path) - k:]
        if suffix in by_path and by_path[suffix] == shape:
          return shard_by_path[suffix]
    return other(tuple(shape))

  return jax.tree_util.tree_map_with_path(
      one, tree, is_leaf=lambda node: _mirrors(node, params_def))


def batch_sharding(mesh: Mesh, ndim: int = 2, stacked: bool = False) -> NamedSharding:
  """Batch dimension over (data, fsdp); the rest replicated (scalars: replicated).

  stacked: a leading axis of steps comes first ([steps, batch, ...]).
  """
  lead = (None,) if stacked else ()
  if ndim - len(lead) <= 0:
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, P(*lead, BATCH_AXES, *([None] * (ndim - len(lead) - 1))))


def example_global_batch(local: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Zeros shaped like the global batch that host-local `local` is a slice of."""
  n = jax.process_count()
  return {k: np.zeros((np.shape(v)[0] * n,) + np.shape(v)[1:], np.asarray(v).dtype)
          if np.ndim(v) else np.zeros((), np.asarray(v).dtype) for k, v in local.items()}


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                 stacked: bool = False) -> dict[str, jax.Array]:
  """Host-local numpy arrays -> global arrays sharded over (data, fsdp).

  Each process passes its own slice of the global batch (leading dimension
  = global_batch / process_count); single-process this is a device_put.
  """
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    out[key] = jax.make_array_from_process_local_data(
        batch_sharding(mesh, value.ndim, stacked), value)
  return out
