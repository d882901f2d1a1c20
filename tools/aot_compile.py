r"""Ahead-of-time compilation of the real train step for a TPU topology, on any host.

  pip install -e '.[tpu]'      # libtpu: the TPU compiler; no TPU is needed to compile
  python -m tools.aot_compile --config=experiments/configs/llama3_1b.py \
      --topology=v5e:4x4 --mesh=fsdp=-1          [--config.trainer.num_microbatches=2 ...]
  python -m tools.aot_compile --config=experiments/configs/llama3_8b.py \
      --topology=v5p-128 --sweep                 # meshes x micro-batches x remat policies

The step compiled is the trainer's own (`framework.train_step.make_train_step`
under `scan_steps` and `jit_train_step`, state shardings from
`framework.train_state.state_shardings` and the config's logical-axis rules),
lowered with abstract arguments for the devices of
`jax.experimental.topologies.get_topology_desc`; nothing runs. `--topology`
takes `v5e:4x4` (chips per axis) or an accelerator type (`v5e-16`, `v5p-128`;
for v4 and v5p the number counts TensorCores, two per chip). v4 compiles for
megacore chips (one device per chip), as a v4 slice trains.

Per device it prints, from `compiled.memory_analysis()`:
  total = argument + output - alias + temp
(the donated state is written in place of its input, so `alias` counts once),
whether `total` fits the chip's HBM (`CHIPS`), and side by side the analytic
estimate (`analytic_memory`): with N parameters, s_p = the devices one
parameter is split over (fsdp x tensor for the big matrices), fp32 master
weights and AdamW's two fp32 moments,
  params = 4 N / s_p,  optimizer = 8 N / s_p,  gradients = 4 N / s_p
(x2 with micro-batches: the fp32 accumulator and one micro-batch's gradient),
  activations = t [ a_layers(remat) + 8 V / tau ],
t the tokens of one micro-batch on one device, tau the tensor axis, 8 V / tau
the fp32 logits and their gradient; per token and layer, in the compute
dtype of c bytes (d model width, f MLP width, h / k query / kv heads of width
e, T sequence length):
  x    = c d                                      block input (residual stream)
  lin  = c (4 d + (2h + 2k) e / tau + 3 f / tau)  inputs/outputs of the weight matmuls
  att  = (4 + c) h T / tau                        attention scores (fp32) and probabilities
  a_layers = L (x + lin + att)                    remat "none"
           = L (x + lin + c h T / tau)            "dots_saveable" (the score matmul is saved)
           = L (x + lin)                          "dots_with_no_batch_dims_saveable"
           = L x + lin + att                      "full" (one block recomputed at a time)
It is an estimate (XLA fuses, pads to tiles and overlaps lifetimes); the
compiled figure is the one to trust.

FLOPs: `cost_analysis()["flops"]` is per device and counts a while loop's
body once, so with M micro-batches (a scan) it is multiplied by M (likewise
steps_per_call); x devices it is compared
with the model's count, 6 N_non-embedding + causal attention + LM head per
token (`models.transformer.flops_per_token`) x tokens per step. Remat adds a
recomputed forward (~ +1/3 for "full").
With `model.scan_layers` the layer stack is a loop too, and XLA's count sees
one layer: the report then also gives the traced step's matmul FLOPs
(`framework.flops.jaxpr_matmul_flops`: every dot_general, scan bodies x their
length, attention unmasked, remat recompute included), which the step-time
bound uses when it is the larger.

Collectives are read from the compiled HLO text (`collectives`): kind, count
and bytes per device (the larger of an op's operands and result), each op
counted as often as it runs (a body of a while loop with a known trip count,
e.g. the micro-batch scan, counts that many times).

Step time lower bound and MFU upper bound (`PEAK`: bf16 dense peak per chip):
  t_step >= max(F_dev / peak, t_xla, B_coll / ICI)
F_dev the compiled FLOPs per device, t_xla XLA's TPU cost model
(`optimal_seconds`: a per-op roofline of FLOPs and HBM traffic; collectives
not included), B_coll the collective bytes per device and ICI the chip's
bidirectional inter-chip bandwidth (omitted where the table has none);
  MFU <= F_model / (devices x peak x t_step).
The sweep (`--sweep`) ranks the candidates that fit by this t_step.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any, Iterable, Mapping, Optional, Sequence

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from framework import flops as flops_lib
from framework import mesh as mesh_lib
from framework import optim
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib
from framework import trainer
from models import registry
from models import transformer

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  kind: str            # jax device_kind of the compile-only devices
  hbm_bytes: int       # HBM per chip
  ici_bytes_per_s: Optional[float]   # bidirectional inter-chip interconnect per chip
  source: str


# HBM per chip and ICI bandwidth from the Cloud TPU system architecture pages:
#   v4  https://cloud.google.com/tpu/docs/v4   (32 GiB HBM2; ICI not listed there)
#   v5e https://cloud.google.com/tpu/docs/v5e  (16 GB HBM2, ICI 400 GBps per chip)
#   v5p https://cloud.google.com/tpu/docs/v5p  (95 GiB HBM2e, ICI 1200 GBps per chip)
#   v6e https://cloud.google.com/tpu/docs/v6e  (32 GB HBM, ICI 800 GBps per chip)
# Capacities are taken as GiB (what `jax.Device.memory_stats` reports is
# slightly less). Peak bf16 FLOP/s per chip (v4 275, v5e 197, v5p 459, v6e
# 918 TFLOP/s, same pages) live in `framework.flops.PEAK_FLOPS`.
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GIB, None, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5 lite", 16 * GIB, 400e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5", 95 * GIB, 1200e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6 lite", 32 * GIB, 800e9, "https://cloud.google.com/tpu/docs/v6e"),
}
_GENERATION_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
# Slice shapes by chip count (accelerator types v5e-N / v6e-N count chips,
# v4-N / v5p-N count TensorCores, two per chip).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16"}
LM_BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
REMAT_ORDER = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")


class AotError(ValueError):
  """A topology, mesh or config that cannot be compiled; the message names it."""


def topology_name(spec: str) -> tuple[str, str]:
  """(generation, `gen:AxB[xC]`) from `v5e:4x4` or an accelerator type `v5p-128`."""
  spec = spec.strip().lower()
  if ":" in spec:
    gen, shape = spec.split(":", 1)
  elif "-" in spec:
    gen, count = spec.rsplit("-", 1)
    gen = _GENERATION_ALIASES.get(gen, gen)
    if gen not in CHIPS or not count.isdigit():
      raise AotError(f"--topology={spec!r}: expected e.g. v5e-16, v5p-128, or v5e:4x4")
    n = int(count)
    chips = n // 2 if gen in ("v4", "v5p") else n
    table = _SHAPES_3D if gen in ("v4", "v5p") else _SHAPES_2D
    if chips not in table:
      raise AotError(f"--topology={spec!r}: no known slice shape for {chips} chips; "
                     f"give it as {gen}:AxB{'xC' if table is _SHAPES_3D else ''}")
    shape = table[chips]
  else:
    raise AotError(f"--topology={spec!r}: expected e.g. v5e:4x4 or v5p-128")
  gen = _GENERATION_ALIASES.get(gen, gen)
  if gen not in CHIPS:
    raise AotError(f"--topology={spec!r}: unknown TPU generation {gen!r}; "
                   f"known: {sorted(CHIPS)}")
  if not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise AotError(f"--topology={spec!r}: the shape {shape!r} must look like 4x4 or 4x4x8")
  return gen, f"{gen}:{shape}"


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def topology_devices(spec: str) -> tuple[str, list[Any]]:
  """(generation, compile-only TPU devices) of a topology; v4 as megacore chips."""
  if not libtpu_available():
    raise AotError("libtpu is not installed: pip install -e '.[tpu]' (or jax[tpu]) "
                   "to compile for TPU topologies")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  gen, name = topology_name(spec)
  kwargs = {"chip_config_name": "megacore"} if gen == "v4" else {}
  try:
    with _libtpu_env():
      topo = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
  except Exception as err:  # pylint: disable=broad-except
    raise AotError(f"--topology={spec!r} ({name}): libtpu refused it: "
                   f"{' '.join(str(err).split())[:300]}") from None
  return gen, list(topo.devices)


# libtpu takes a machine-wide lock file that any JAX process which probed for a
# TPU may hold, and asks a TPU VM's metadata server for the accelerator type and
# workers (here it only warns). Compiling needs neither: set while libtpu
# loads, then put back, so that processes started later do not inherit them.
_LIBTPU_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-4",
               "TPU_WORKER_HOSTNAMES": "localhost"}


@contextlib.contextmanager
def _libtpu_env():
  saved = {k: os.environ.get(k) for k in _LIBTPU_ENV}
  for key, value in _LIBTPU_ENV.items():
    os.environ.setdefault(key, value)
  try:
    yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


def parse_mesh(text: str) -> dict[str, int]:
  """`fsdp=-1,tensor=4` -> {data: 1, fsdp: -1, tensor: 4} (absent axes are 1)."""
  shape = {axis: 1 for axis in mesh_lib.MESH_AXES}
  for item in filter(None, (s.strip() for s in text.split(","))):
    if "=" not in item:
      raise AotError(f"--mesh: {item!r} must be axis=size, e.g. fsdp=-1,tensor=4")
    axis, size = item.split("=", 1)
    if axis.strip() not in shape:
      raise AotError(f"--mesh: unknown axis {axis.strip()!r}; axes are {list(shape)}")
    shape[axis.strip()] = int(size)
  return shape


# --------------------------------------------------------------------- HLO text

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1,
                "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "s4": 0.5, "u4": 0.5, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8,
                "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                    "collective-permute")
_COMP_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_CALLED_LIST = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_CONST = re.compile(r"^\s*%([\w.\-]+) = s32\[\]\S* constant\((\d+)\)")
_LT_ROOT = re.compile(r"ROOT .*compare\(%[\w.\-]+, %([\w.\-]+)\), direction=LT")


def _trip_from_condition(lines: Sequence[str]) -> int:
  """N for a loop condition `ROOT compare(counter, constant(N)), direction=LT`.

  The shape JAX lowers scans and fori_loops to (counter from 0, step 1);
  anything else counts once.
  """
  consts = {m.group(1): int(m.group(2)) for m in map(_CONST.match, lines) if m}
  for line in lines:
    m = _LT_ROOT.search(line)
    if m and m.group(1) in consts:
      return consts[m.group(1)]
  return 1


def _array_bytes(shape_text: str) -> list[float]:
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    if dtype not in _DTYPE_BYTES:
      continue
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    out.append(n * _DTYPE_BYTES[dtype])
  return out


def _split_shape(rest: str) -> tuple[str, str]:
  """'(f32[2], u32[]) op(%a), k=v' -> ('(f32[2], u32[])', 'op(%a), k=v')."""
  rest = rest.strip()
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].strip()
  head, _, tail = rest.partition(" ")
  return head, tail.strip()


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
  """{kind: {count, bytes}} per device, each op weighted by how often it runs."""
  comps: dict[str, list[str]] = {}
  params: dict[str, dict[str, str]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = _COMP_HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(2)
      comps[current] = []
      params[current] = dict(re.findall(
          r"([\w.\-]+):\s*(\([^)]*\)|[a-z][a-z0-9]*\[[^\]]*\])", header.group(3)))
      if header.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    if current is not None:
      comps[current].append(line)
  if entry is None:
    return {kind: {"count": 0, "bytes": 0.0} for kind in COLLECTIVE_KINDS}

  # Multiplicity: how many times each computation runs per step.
  edges: dict[str, list[tuple[str, int]]] = {}
  for name, lines in comps.items():
    out = []
    for line in lines:
      trip = _TRIP.search(line)
      is_while = " while(" in line
      count = int(trip.group(1)) if (is_while and trip) else 1
      if is_while and not trip:   # the TPU compiler's HLO often drops known_trip_count
        cond = _CONDITION.search(line)
        count = _trip_from_condition(comps.get(cond.group(1), [])) if cond else 1
      for callee in _CALLED.findall(line):
        out.append((callee, count))
      for group in _CALLED_LIST.findall(line):
        out += [(c.strip().lstrip("%"), 1) for c in group.split(",") if c.strip()]
    edges[name] = out
  times: dict[str, float] = {}

  def visit(name: str, mult: float, depth: int = 0):
    if name not in comps or depth > 64:
      return
    times[name] = times.get(name, 0.0) + mult
    for callee, k in edges.get(name, ()):
      visit(callee, mult * k, depth + 1)
  visit(entry, 1.0)

  result = {kind: {"count": 0, "bytes": 0.0} for kind in COLLECTIVE_KINDS}
  for name, lines in comps.items():
    mult = times.get(name, 0.0)
    if not mult:
      continue
    shapes = dict(params.get(name, {}))
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      result_shape, rest = _split_shape(m.group(2))
      shapes[m.group(1)] = result_shape
      op = rest.split("(", 1)[0].strip()
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if kind not in result:
        continue
      operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
      in_bytes = sum(sum(_array_bytes(shapes.get(o, ""))) for o in operands)
      out_arrays = _array_bytes(result_shape)
      # Async starts return (operands, results, context scalars): the biggest array.
      out_bytes = max(out_arrays) if op.endswith("-start") and out_arrays else sum(out_arrays)
      result[kind]["count"] += mult
      result[kind]["bytes"] += mult * max(in_bytes, out_bytes)
  return result


# --------------------------------------------------------------- the analytic side

def _mesh_ways(rules: Sequence[tuple[str, Any]], logical: str, sizes: Mapping[str, int]) -> int:
  axes = dict(rules).get(logical)
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(int(sizes.get(a, 1)) for a in axes)


def analytic_memory(mcfg: transformer.TransformerConfig, *, seq_len: int,
                    global_batch: int, num_microbatches: int, sizes: Mapping[str, int],
                    rules: Sequence[tuple[str, Any]]) -> dict[str, float]:
  """Bytes per device (module docstring): params, optimizer, grads, activations."""
  counts = transformer.count_params(mcfg)
  n = counts["total"]
  # The big matrices are split over `embed` (fsdp) and one of heads/mlp/vocab (tensor).
  shards = _mesh_ways(rules, "embed", sizes) * _mesh_ways(rules, "mlp", sizes)
  tau = _mesh_ways(rules, "mlp", sizes)
  batch_ways = _mesh_ways(rules, "activation_batch", sizes)
  c = jnp.dtype(mcfg.dtype).itemsize
  d, f, h, k, e, t_len = (mcfg.d_model, mcfg.d_ff, mcfg.num_heads, mcfg.num_kv_heads,
                          mcfg.head_dim, seq_len)
  x = c * d
  lin = c * (4 * d + (2 * h + 2 * k) * e / tau + 3 * f / tau)
  att = (4 + c) * h * t_len / tau
  layers = mcfg.num_layers
  remat = mcfg.remat if isinstance(mcfg.remat, str) else ("full" if mcfg.remat else "none")
  per_token = {
      "none": layers * (x + lin + att),
      "dots_saveable": layers * (x + lin + c * h * t_len / tau),
      "dots_with_no_batch_dims_saveable": layers * (x + lin),
      "full": layers * x + lin + att,
  }[remat] + 8 * mcfg.vocab_size / tau
  tokens = global_batch / batch_ways / max(num_microbatches, 1) * seq_len
  out = {
      "params": 4.0 * n / shards,
      "optimizer": 8.0 * n / shards,
      "gradients": 4.0 * n / shards * (2 if num_microbatches > 1 else 1),
      "activations": tokens * per_token,
      "batch": global_batch / batch_ways * seq_len * 4 * len(LM_BATCH_KEYS),
  }
  out["total"] = sum(out.values())
  return out


# --------------------------------------------------------------------- compiling

@dataclasses.dataclass
class Report:
  topology: str
  devices: int
  mesh: dict[str, int]
  num_microbatches: int
  remat: str
  compile_s: float
  memory: dict[str, float]          # per device, bytes: argument/output/alias/temp/code/total
  fits: bool
  hbm_bytes: int
  analytic: dict[str, float]
  flops_per_device: float
  model_flops_per_step: float
  collectives: dict[str, dict[str, float]]
  step_time_lb_s: float
  time_terms_s: dict[str, float]
  mfu_upper_bound: float
  param_bytes_per_device: float     # from the state shardings
  note: str = ""                    # why there are no compiled figures (compiler OOM)
  # Matmul FLOPs of the traced step (all devices), scan bodies x their length:
  # XLA's count above sees a scanned layer stack's body once.
  traced_flops_per_step: float = float("nan")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _shard_bytes(abstract: Any, shardings: Any) -> float:
  total = 0.0
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    shape = sharding.shard_shape(tuple(leaf.shape))
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def prepare(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unlocked copy that the framework's config checks accept."""
  config = copy.deepcopy(config)
  try:
    config.unlock()
  except AttributeError:
    pass
  trainer.check_config(config)
  return config


def compile_step(config: ml_collections.ConfigDict, devices: Sequence[Any],
                 topology: str = "") -> tuple[Any, Report]:
  """Lowers and compiles the config's train step for `devices`; (compiled, report)."""
  config = prepare(config)
  sizes = mesh_lib.resolve_mesh_shape(dict(config.mesh.shape), len(devices))
  mesh = mesh_lib.create_mesh(sizes, devices=devices)
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  gbs, seq = int(config.data.global_batch_size), int(config.data.seq_len)
  mb = int(config.trainer.num_microbatches)
  batch_ways = sizes["data"] * sizes["fsdp"]
  if gbs % (batch_ways * mb):
    raise AotError(f"data.global_batch_size={gbs} must split into {mb} micro-batch(es) "
                   f"over the {batch_ways} data x fsdp shards of mesh {sizes}")
  try:
    mcfg = registry.make_config(config.model)
  except (TypeError, ValueError) as err:
    raise AotError(f"config.model: {err}") from None
  model = registry.build(config.model)
  total_steps = int(config.trainer.total_steps)
  schedule = optim.make_schedule(config.schedule, total_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  example = {k: jax.ShapeDtypeStruct((gbs, seq), jnp.int32) for k in LM_BATCH_KEYS}
  steps_per_call = int(config.trainer.get("steps_per_call", 1))
  full_batch = bool(config.trainer.get("full_batch", False))
  stacked = steps_per_call > 1 and not full_batch
  abstract, shardings = train_state_lib.state_shardings(model, tx, example, mesh, rules,
                                                        seed=int(config.seed))
  step_fn = train_step_lib.make_train_step(model, tx, schedule=schedule, num_microbatches=mb)
  step = train_step_lib.jit_train_step(
      train_step_lib.scan_steps(step_fn, steps_per_call, same_batch=full_batch),
      shardings, mesh, rules, example, stacked=stacked)
  batch = (example if not stacked else
           {k: jax.ShapeDtypeStruct((steps_per_call,) + v.shape, v.dtype)
            for k, v in example.items()})
  gen = topology_name(topology)[0] if topology else ""
  chip = CHIPS.get(gen)
  hbm = chip.hbm_bytes if chip else 0
  n_dev = len(devices)
  model_flops = transformer.flops_per_token(mcfg, seq) * gbs * seq * steps_per_call
  analytic = analytic_memory(mcfg, seq_len=seq, global_batch=gbs, num_microbatches=mb,
                             sizes=sizes, rules=rules)
  report = Report(
      topology=topology, devices=n_dev, mesh=dict(sizes), num_microbatches=mb,
      remat=str(mcfg.remat), compile_s=0.0, memory={}, fits=False, hbm_bytes=hbm,
      analytic=analytic, flops_per_device=float("nan"), model_flops_per_step=model_flops,
      collectives={}, step_time_lb_s=float("nan"), time_terms_s={},
      mfu_upper_bound=float("nan"),
      param_bytes_per_device=_shard_bytes(abstract.params, shardings.params))
  start = time.perf_counter()
  traced = step.trace(abstract, batch)
  report.traced_flops_per_step = flops_lib.jaxpr_matmul_flops(traced.jaxpr)
  try:
    compiled = traced.lower().compile()
  except jax.errors.JaxRuntimeError as err:
    oom = parse_oom(str(err))
    if oom is None:
      raise
    # The TPU compiler refuses a program that cannot fit: that is the answer.
    report.compile_s = time.perf_counter() - start
    report.memory = {"argument": _shard_bytes(abstract, shardings)
                     + _shard_bytes(batch, {k: sharding_lib.batch_sharding(mesh, v.ndim, stacked)
                                            for k, v in batch.items()}),
                     "required": oom[0], "available": oom[1]}
    # "HLO temporaries" exclude the arguments; "Used X of Y" is everything.
    report.memory["total"] = oom[0] + (report.memory["argument"]
                                       if "temporaries" in oom[2] else 0.0)
    report.note = f"does not fit; compiler: {oom[2]}"
    return None, report
  report.compile_s = time.perf_counter() - start

  mem = compiled.memory_analysis()
  memory = {
      "argument": float(mem.argument_size_in_bytes), "output": float(mem.output_size_in_bytes),
      "alias": float(mem.alias_size_in_bytes), "temp": float(mem.temp_size_in_bytes),
      "code": float(mem.generated_code_size_in_bytes)}
  memory["total"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  # XLA's cost analysis counts a while loop's body once: with micro-batches
  # (a scan over them) nearly the whole step is that body, run `mb` times
  # (the optimizer update outside it is well under 1% of the FLOPs).
  loops = mb * steps_per_call
  flops_dev = float(cost.get("flops", 0.0)) * loops
  xla_seconds = float(cost.get("optimal_seconds", 0.0)) * loops
  peak = flops_lib.table_peak(devices[0].device_kind) or 0.0
  colls = collectives(compiled.as_text())
  coll_bytes = sum(v["bytes"] for v in colls.values())
  # With scanned layers XLA's figure misses L - 1 bodies; the traced matmul
  # count (a lower bound on the program's FLOPs) is then the larger one.
  compute_flops = max(flops_dev, report.traced_flops_per_step / n_dev)
  terms = {"compute": compute_flops / peak if peak else 0.0}
  if xla_seconds > 0:   # it overflows to negative on big loop bodies: left out then
    terms["xla_cost_model"] = xla_seconds
  if chip and chip.ici_bytes_per_s:
    terms["collectives"] = coll_bytes / chip.ici_bytes_per_s
  t_lb = max(terms.values())
  report.memory = memory
  report.fits = bool(hbm) and memory["total"] <= hbm
  report.flops_per_device = flops_dev
  report.collectives = colls
  report.step_time_lb_s = t_lb
  report.time_terms_s = terms
  report.mfu_upper_bound = (model_flops / (n_dev * peak * t_lb) if peak and t_lb > 0
                            else float("nan"))
  return compiled, report


_SIZE = r"([0-9.]+)\s*([KMGT]i?B?|B)?"
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: Optional[str]) -> float:
  return float(number) * _UNITS[(unit or "")[:1]]


def parse_oom(message: str) -> Optional[tuple[float, float, str]]:
  """(bytes required, bytes available, the sentence) from the TPU compiler's
  out-of-memory error, or None if `message` is not one."""
  if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
    return None
  text = " ".join(message.split())
  m = re.search(r"required for ([\w ]+?) \(" + _SIZE + r"\) exceeds available (\w+) \("
                + _SIZE + r"\)", text)
  if m:
    return (_bytes(m.group(2), m.group(3)), _bytes(m.group(5), m.group(6)),
            f"{m.group(1)} need {m.group(2)}{m.group(3) or ''} > {m.group(5)}"
            f"{m.group(6) or ''} of {m.group(4)}")
  m = re.search(r"Used " + _SIZE + r" of " + _SIZE + r" (\w+)", text)
  if m:
    return (_bytes(m.group(1), m.group(2)), _bytes(m.group(3), m.group(4)),
            f"used {m.group(1)}{m.group(2) or ''} of {m.group(3)}{m.group(4) or ''} "
            f"{m.group(5)}")
  m = re.search(r"Ran out of memory in memory space (\w+)", text)
  if m:   # e.g. vmem: one fusion's on-chip scratch, no HBM figure
    return (float("nan"), float("nan"),
            f"ran out of {m.group(1)} (one fusion's on-chip scratch, not HBM)")
  return None


def extrapolate(small: Report, large: Report, depth_small: int, depth_large: int,
                depth: int, analytic: Mapping[str, float]) -> Report:
  """The report of a `depth`-layer model from compiles at two smaller depths.

  The step is a stack of identical blocks around a fixed embedding / head /
  loss, so every compiled quantity q (argument, output, alias and temp bytes,
  FLOPs, collective counts and bytes, the cost-model time) is taken as
  q(L) = q0 + L q1 through the two compiles; derived figures (total, fits,
  step time, MFU) are recomputed from the extrapolated ones. Caution: the
  compiler schedules and fuses a 1-layer program differently (the one
  transient block and the loss are a large share of it), so fit on depths
  >= 2 and check one cell against a full-depth compile; from (1, 2) layers
  the Llama-3 1B step extrapolated to 16 layers gave FLOPs below the model
  count, i.e. wrong.
  """
  if small.note or large.note:   # a compiler OOM at fewer layers: none fit at more
    oom, layers = (small, depth_small) if small.note else (large, depth_large)
    return dataclasses.replace(
        oom, analytic=dict(analytic), fits=False,
        compile_s=small.compile_s + (large.compile_s if large is not small else 0.0),
        note=f"does not fit: already at {layers} layers the {oom.note.split('; ', 1)[-1]}")
  w = (depth - depth_small) / (depth_large - depth_small)
  line = lambda a, b: a + w * (b - a)
  out = dataclasses.replace(small, analytic=dict(analytic),
                            compile_s=small.compile_s + large.compile_s,
                            note=f"extrapolated from {depth_small} and {depth_large} layers")
  out.memory = {k: line(small.memory[k], large.memory[k]) for k in small.memory}
  m = out.memory
  m["total"] = m["argument"] + m["output"] - m["alias"] + m["temp"]
  out.fits = bool(out.hbm_bytes) and m["total"] <= out.hbm_bytes
  out.flops_per_device = line(small.flops_per_device, large.flops_per_device)
  out.model_flops_per_step = line(small.model_flops_per_step, large.model_flops_per_step)
  out.param_bytes_per_device = line(small.param_bytes_per_device, large.param_bytes_per_device)
  out.collectives = {k: {f: line(v[f], large.collectives[k][f]) for f in v}
                     for k, v in small.collectives.items()}
  out.time_terms_s = {k: line(v, large.time_terms_s[k]) for k, v in small.time_terms_s.items()}
  out.step_time_lb_s = max(out.time_terms_s.values()) if out.time_terms_s else float("nan")
  peak = out.flops_per_device / out.time_terms_s["compute"] if out.time_terms_s.get(
      "compute") else 0.0
  out.mfu_upper_bound = (out.model_flops_per_step / (out.devices * peak * out.step_time_lb_s)
                         if peak and out.step_time_lb_s > 0 else float("nan"))
  return out


def compile_or_extrapolate(config: ml_collections.ConfigDict, devices: Sequence[Any],
                           topology: str, depths: Sequence[int] = ()) -> Report:
  """`compile_step`'s report; with depths=(a, b), compiles the model at a and
  b layers and extrapolates to its own depth (`extrapolate`): a 16- or
  32-layer model costs two short compiles instead of one long one."""
  if not depths:
    return compile_step(config, devices, topology)[1]
  if len(depths) != 2 or not 0 < depths[0] < depths[1]:
    raise AotError(f"--extrapolate_from={list(depths)}: give two depths a < b, e.g. 2,4")
  config = prepare(config)
  depth = int(config.model.num_layers)
  reports = []
  for layers in depths:
    trial = copy.deepcopy(config)
    trial.model.num_layers = int(layers)
    reports.append(compile_step(trial, devices, topology)[1])
    if reports[-1].note:   # out of memory already: it will not fit deeper
      break
  if len(reports) == 1:
    reports.append(reports[0])
  sizes = mesh_lib.resolve_mesh_shape(dict(config.mesh.shape), len(devices))
  analytic = analytic_memory(
      registry.make_config(config.model), seq_len=int(config.data.seq_len),
      global_batch=int(config.data.global_batch_size),
      num_microbatches=int(config.trainer.num_microbatches), sizes=sizes,
      rules=sharding_lib.normalize_rules(config.sharding.rules))
  return extrapolate(reports[0], reports[1], depths[0], depths[1], depth, analytic)


# ------------------------------------------------------------------------ sweep

def candidate_meshes(n_devices: int, mcfg: transformer.TransformerConfig,
                     max_tensor: int = 8) -> list[dict[str, int]]:
  """fsdp over all devices, and fsdp x tensor for tensor sizes that divide the heads."""
  out = [dict(data=1, fsdp=n_devices, tensor=1)]
  t = 2
  while t <= min(max_tensor, n_devices):
    if (n_devices % t == 0 and mcfg.num_kv_heads % t == 0 and mcfg.num_heads % t == 0
        and mcfg.d_ff % t == 0):
      out.append(dict(data=1, fsdp=n_devices // t, tensor=t))
    t *= 2
  return out


def sweep(config: ml_collections.ConfigDict, devices: Sequence[Any], topology: str, *,
          meshes: Optional[Iterable[Mapping[str, int]]] = None,
          microbatches: Sequence[int] = (1, 2, 4, 8, 16),
          remats: Sequence[str] = REMAT_ORDER,
          depths: Sequence[int] = (),
          log=print) -> tuple[list[Report], Optional[Report]]:
  """Compiles mesh x remat x micro-batch candidates; returns (all, fastest that fits).

  Per mesh and remat policy it looks for the fewest micro-batches that fit
  (more only lengthen the step): it starts at the smallest count whose
  analytic estimate fits the HBM, goes up while the compiled step does not
  fit and down while it does. Policies go from least to most recompute; one
  that fits with the fewest micro-batches of the list ends the mesh (more
  recompute only adds time). depths: see `compile_or_extrapolate`.
  """
  config = prepare(config)
  mcfg = registry.make_config(config.model)
  meshes = list(meshes) if meshes is not None else candidate_meshes(len(devices), mcfg)
  gen = topology_name(topology)[0]
  hbm = CHIPS[gen].hbm_bytes
  gbs, seq = int(config.data.global_batch_size), int(config.data.seq_len)
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  reports: list[Report] = []
  for shape in meshes:
    try:
      sizes = mesh_lib.resolve_mesh_shape(dict(shape), len(devices))
    except mesh_lib.MeshError as err:
      log(f"  skip mesh {dict(shape)}: {err}")
      continue
    ways = sizes["data"] * sizes["fsdp"]
    counts = [m for m in microbatches if gbs % (ways * m) == 0]
    for remat in remats:
      trial_cfg = dataclasses.replace(mcfg, remat=remat)
      estimate = [analytic_memory(trial_cfg, seq_len=seq, global_batch=gbs, num_microbatches=m,
                                  sizes=sizes, rules=rules)["total"] for m in counts]
      i = next((j for j, e in enumerate(estimate) if e <= hbm), len(counts) - 1)
      tried: dict[int, Report] = {}
      while 0 <= i < len(counts) and counts[i] not in tried:
        trial = copy.deepcopy(config)
        trial.mesh.shape = dict(sizes)
        trial.model.remat = remat
        trial.trainer.num_microbatches = counts[i]
        rep = compile_or_extrapolate(trial, devices, topology, depths)
        tried[counts[i]] = rep
        reports.append(rep)
        log("  " + one_line(rep))
        i += -1 if rep.fits else 1
      fit = [m for m, r in tried.items() if r.fits]
      if fit and min(fit) == counts[0]:
        break
  fitting = [r for r in reports if r.fits]
  best = min(fitting, key=lambda r: r.step_time_lb_s) if fitting else None
  return reports, best


# ----------------------------------------------------------------------- output

def _gib(x: float) -> str:
  if abs(x) < GIB:
    return f"{x / 2**20:.1f} MiB"
  return f"{x / GIB:.2f} GiB"


def mesh_label(mesh: Mapping[str, int]) -> str:
  return " x ".join(f"{a} {s}" for a, s in mesh.items() if s > 1) or "1 device"


def one_line(r: Report) -> str:
  head = f"mesh {mesh_label(r.mesh)}, remat {r.remat}, micro-batches {r.num_microbatches}: "
  if not r.memory.get("output") and r.note:
    return (head + f"total >= {_gib(r.memory['total'])} (analytic {_gib(r.analytic['total'])})"
            f" {r.note} (after {r.compile_s:.0f} s)")
  return (head + f"total {_gib(r.memory['total'])} (analytic {_gib(r.analytic['total'])}) "
          f"{'fits' if r.fits else 'does NOT fit'} {_gib(r.hbm_bytes)}; step >= "
          f"{r.step_time_lb_s * 1e3:.1f} ms, MFU <= {r.mfu_upper_bound:.1%}; "
          f"compiled in {r.compile_s:.0f} s")


def format_report(r: Report) -> str:
  m, a = r.memory, r.analytic
  if not m.get("output") and r.note:
    return "\n".join([
        f"topology {r.topology}: {r.devices} devices, mesh {r.mesh}, "
        f"micro-batches {r.num_microbatches}, remat {r.remat}",
        f"  {r.note} (after {r.compile_s:.1f} s)",
        f"  arguments per device (state + batch shards): {_gib(m['argument'])}; total >= "
        f"{_gib(m['total'])}",
        f"  analytic: params {_gib(a['params'])} + optimizer {_gib(a['optimizer'])} + "
        f"gradients {_gib(a['gradients'])} + activations {_gib(a['activations'])} + batch "
        f"{_gib(a['batch'])} = {_gib(a['total'])}"])
  lines = [
      f"topology {r.topology}: {r.devices} devices, mesh {r.mesh}, "
      f"micro-batches {r.num_microbatches}, remat {r.remat}; compiled in {r.compile_s:.1f} s"
      + (f" ({r.note})" if r.note else ""),
      "memory per device (compiled | analytic):",
      f"  argument {_gib(m['argument'])} | params {_gib(a['params'])} + optimizer "
      f"{_gib(a['optimizer'])} + batch {_gib(a['batch'])}",
      f"  output   {_gib(m['output'])} (aliased with donated arguments: {_gib(m['alias'])})",
      f"  temp     {_gib(m['temp'])} | gradients {_gib(a['gradients'])} + activations "
      f"{_gib(a['activations'])}",
      f"  total    {_gib(m['total'])} | {_gib(a['total'])}   (generated code "
      f"{m['code'] / 2**20:.1f} MiB)",
      f"  parameters per device (compiled shardings): {_gib(r.param_bytes_per_device)}",
      f"  HBM {_gib(r.hbm_bytes)}: {'fits' if r.fits else 'does NOT fit'}",
      f"FLOPs per step: compiled {r.flops_per_device * r.devices:.4g} "
      f"({r.flops_per_device:.4g} per device) vs model 6N*tokens + attention + head "
      f"{r.model_flops_per_step:.4g} (ratio {r.flops_per_device * r.devices / max(r.model_flops_per_step, 1):.3f})",
      f"traced matmul FLOPs per step {r.traced_flops_per_step:.4g} (ratio "
      f"{r.traced_flops_per_step / max(r.model_flops_per_step, 1):.3f}; scan bodies x length, "
      f"unmasked attention, remat recompute included)",
      "collectives per device per step (kind: count, bytes):",
  ]
  for kind, v in r.collectives.items():
    if v["count"]:
      lines.append(f"  {kind:18s} {int(v['count']):6d}  {_gib(v['bytes'])}")
  terms = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r.time_terms_s.items())
  lines.append(f"step time >= {r.step_time_lb_s * 1e3:.2f} ms ({terms}); "
               f"MFU upper bound {r.mfu_upper_bound:.1%}")
  return "\n".join(lines)


def _define_flags():
  """Flags exist only when this runs as a program, so importing it (tests) defines none."""
  global _CONFIG, _TOPOLOGY, _MESH, _SWEEP, _SWEEP_MB, _SWEEP_REMAT, _SWEEP_MESHES, _EXTRAPOLATE, _JSON
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Config file (as for experiments.launch); --config.x=y overrides.",
      lock_config=False)
  _TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2",
                                  "TPU topology: v5e:4x4, v5p:4x4x4, or an accelerator "
                                  "type such as v5e-16, v5p-128.")
  _MESH = flags.DEFINE_string("mesh", "", "Mesh shape replacing config.mesh.shape, "
                              "e.g. fsdp=-1 or fsdp=-1,tensor=4 (absent axes are 1).")
  _SWEEP = flags.DEFINE_bool("sweep", False, "Try meshes x remat policies x micro-batch "
                             "counts; report the fastest-looking one that fits.")
  _SWEEP_MB = flags.DEFINE_list("sweep_microbatches", ["1", "2", "4", "8", "16"],
                                "Micro-batch counts the sweep tries.")
  _SWEEP_REMAT = flags.DEFINE_list("sweep_remat", list(REMAT_ORDER),
                                   "Remat policies the sweep tries, least recompute first.")
  _SWEEP_MESHES = flags.DEFINE_list("sweep_meshes", [],
                                    "Meshes the sweep tries, each as for --mesh with ';' "
                                    "between axes (fsdp=-1;tensor=4). Default: fsdp, and "
                                    "fsdp x tensor for tensor 2, 4, 8.")
  _EXTRAPOLATE = flags.DEFINE_list("extrapolate_from", [],
                                    "Two depths a,b: compile the model with a and b layers "
                                    "and extrapolate linearly to its own depth (faster).")
  _JSON = flags.DEFINE_string("json", "", "Also write the report(s) as JSON to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")   # compiling needs no TPU attached
  try:
    config = prepare(_CONFIG.value)
    if _MESH.value:
      config.mesh.shape = parse_mesh(_MESH.value)
    depths = [int(d) for d in _EXTRAPOLATE.value]
    gen, devices = topology_devices(_TOPOLOGY.value)
    name = topology_name(_TOPOLOGY.value)[1]
    print(f"{_TOPOLOGY.value} = {name}: {len(devices)} x {devices[0].device_kind}, "
          f"HBM {_gib(CHIPS[gen].hbm_bytes)} per chip ({CHIPS[gen].source})", flush=True)
    if _SWEEP.value:
      meshes = ([parse_mesh(m.replace(";", ",")) for m in _SWEEP_MESHES.value]
                if _SWEEP_MESHES.value else None)
      reports, best = sweep(config, devices, name, meshes=meshes,
                            microbatches=[int(m) for m in _SWEEP_MB.value],
                            remats=_SWEEP_REMAT.value, depths=depths,
                            log=lambda s: print(s, flush=True))
      if best is None:
        print("nothing fits: more chips, a larger tensor axis or a smaller global batch")
      else:
        print("\nfastest-looking candidate that fits:\n" + format_report(best))
      out = {"reports": [r.to_json() for r in reports],
             "best": best.to_json() if best else None}
    else:
      report = compile_or_extrapolate(config, devices, name, depths)
      print(format_report(report))
      out = report.to_json()
  except (AotError, mesh_lib.MeshError, ValueError) as err:
    print(f"aot_compile: {' '.join(str(err).split())}", file=sys.stderr)
    sys.exit(2)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("config")
  app.run(main)
