"""Peak FLOP/s per device and model-FLOP utilisation (MFU).

MFU = (model FLOPs per token x tokens per second) / (devices x peak FLOP/s).
The model's FLOPs per token follow the convention its model module states
(for the transformer LM: 6 N + causal attention + LM head).

Peak figures are dense bf16 matmul rates from vendor data sheets. A CPU has no
meaningful sheet figure, so for it (or any unknown device) the peak is the
measured rate of a large fp32 `jnp.dot` on that device, and MFU then reads as
"fraction of what this machine's matmul reaches". `config.trainer.peak_flops`
(per device, > 0) overrides both.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

PEAK_FLOPS = {  # dense bf16, per chip / GPU
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
}


def table_peak(device_kind: str) -> float | None:
  for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
    if device_kind.startswith(prefix):
      return PEAK_FLOPS[prefix]
  return None


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of an n x n fp32 matmul on the default device (best of `repeats`)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def peak_flops_per_device(override: float = 0.0) -> tuple[float, str]:
  """Returns (peak FLOP/s per device, where the figure came from)."""
  if override and override > 0:
    return float(override), "config"
  kind = jax.devices()[0].device_kind
  peak = table_peak(kind)
  if peak is not None:
    return peak, f"table:{kind}"
  # Fake CPU devices share the same cores: the measured rate is for all of them.
  rate = measured_matmul_flops()
  if jax.devices()[0].platform == "cpu":
    rate /= max(len(jax.devices()), 1)
  return rate, f"measured-matmul:{kind}"


def _dot_general_flops(eqn) -> float:
  """2 x batch x M x N x K for one dot_general (K: the contracted size)."""
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  k = int(np.prod([lhs[d] for d in lhs_contract])) if lhs_contract else 1
  return 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * k


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr


def jaxpr_matmul_flops(jaxpr) -> float:
  """Matmul FLOPs of a (closed) jaxpr as traced, each scan body x its length.

  Counts dot_general (2 x output size x contracted size; convolutions are
  not counted); a `scan` multiplies its body by `length`, a `cond` takes its most
  expensive branch, a `while` with unknown trip count counts its body once.
  Unlike XLA's `cost_analysis()`, which counts a loop body once, this gives a
  scanned-layers program its full count; rematerialised forwards appear in
  the differentiated jaxpr and are counted.
  """
  inner = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in inner.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
      continue
    subs = [jaxpr_matmul_flops(j) for j in _sub_jaxprs(eqn)]
    if not subs:
      continue
    if name == "scan":
      total += float(eqn.params["length"]) * sum(subs)
    elif name == "cond":
      total += max(subs)
    else:
      total += sum(subs)
  return total
