r"""Optimizer-update cost of Shampoo and SOAP relative to AdamW on a GPT-like tree.

  python -m tools.bench_shampoo            # ~30M parameters, block 512
  python -m tools.bench_shampoo --small    # ~4M parameters, block 256, ~1 minute
  python -m tools.bench_shampoo --d_model 768 --n_layers 12 --vocab 32768

Prints, side by side, the time of one optimizer update (jitted `tx.update`,
gradients given) of shampoo and soap as a ratio to `optax.adamw`, for root
(preconditioner / eigenbasis) frequencies 1, 10 and 100. The amortised
per-step time for frequency f is (t_root + (f - 1) * t_plain) / f, where
t_root and t_plain are measured on alternating steps of one compiled program
(frequency 2): a step that computes the roots and one that does not. This is
what f consecutive steps cost, without running 100 of them.

It also reports the achieved GFLOP/s of the matmul work of a plain step
(factor statistics + preconditioning, counted analytically per block) both
for the whole plain step and for the isolated kernels, against a plain
batched `jnp.dot` of 512-blocks on the same machine.

Optionally (--precondition_opt) times Google's distributed_shampoo from the
PyPI package `precondition-opt` (0.3.0) with the same block size and
exponent -1/2; its removed `jax.tree_map`-style aliases are restored first.
It is skipped when the package cannot be imported.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizers import kronecker as kr
from optimizers import shampoo, soap


def gpt_params(vocab: int, d_model: int, n_layers: int, d_ff: int,
               seed: int = 0) -> Dict[str, Any]:
  """A GPT-like parameter tree (tied embedding), float32."""
  rng = np.random.default_rng(seed)
  w = lambda *s: jnp.asarray(rng.normal(size=s) * 0.02, jnp.float32)
  params = {"embed": w(vocab, d_model), "final_ln": jnp.ones(d_model)}
  for i in range(n_layers):
    params[f"layer_{i}"] = {
        "ln1": jnp.ones(d_model), "ln2": jnp.ones(d_model),
        "qkv": w(d_model, 3 * d_model), "qkv_b": jnp.zeros(3 * d_model),
        "out": w(d_model, d_model), "mlp_in": w(d_model, d_ff),
        "mlp_in_b": jnp.zeros(d_ff), "mlp_out": w(d_ff, d_model),
    }
  return params


def num_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _block(x):
  jax.block_until_ready(x)
  return x


def update_time(tx: optax.GradientTransformation, params, grads=None, *,
                steps: int = 3, warmup: int = 1, period: int = 1,
                state=None) -> Sequence[float]:
  """Seconds per jitted `tx.update` call, per phase of a period.

  Runs warmup + steps * period updates with fixed gradients and returns,
  for each phase p < period, the median time of the calls whose step index
  is congruent to p (e.g. period=2 separates root and plain steps of an
  optimizer with frequency 2). Compilation is excluded (done before timing).
  """
  grads = params if grads is None else grads
  state = tx.init(params) if state is None else state
  upd = jax.jit(tx.update)
  upd = upd.lower(grads, state, params).compile()
  times = [[] for _ in range(period)]
  for i in range(warmup * period + steps * period):
    t0 = time.perf_counter()
    u, state = upd(grads, state, params)
    _block((u, state))
    if i >= warmup * period:
      times[i % period].append(time.perf_counter() - t0)
  return [float(np.median(t)) for t in times]


def _matrix_blocks(params, block_size):
  """Block shapes (b_r, b_c) of every preconditioned block in the tree."""
  out = []
  for x in jax.tree.leaves(params):
    lay = kr.block_layout(x.shape, block_size=block_size)
    if lay.is_diagonal or len(lay.block_shape) != 2:
      continue
    out += [tuple(lay.block_shape)] * lay.num_blocks
  return out


def matmul_flops(blocks, rotations: int) -> float:
  """FLOPs of a plain step: 2 Gram matrices + `rotations` two-sided products.

  Shampoo: statistics G G^T, G^T G and preconditioning L G R (rotations=1):
  4 r c (r + c) per r x c block. SOAP rotates in and out (rotations=2).
  """
  return float(sum(2 * r * c * (r + c) * (1 + rotations) for r, c in blocks))


def peak_gflops(b: int, n: int, reps: int = 5) -> float:
  """GFLOP/s of a batched jnp.dot of n (b x b) @ (b x b) blocks."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, b, b)), jnp.float32)
  f = jax.jit(lambda a: jnp.matmul(a, a)).lower(x).compile()
  _block(f(x))
  best = np.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    _block(f(x))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n * b ** 3 / best / 1e9


def kernel_time(params, block_size: int, rotations: int, reps: int = 3) -> float:
  """Seconds of only the statistics + preconditioning matmuls of all blocks."""
  lays, xs = [], []
  for x in jax.tree.leaves(params):
    lay = kr.block_layout(x.shape, block_size=block_size)
    if not lay.is_diagonal:
      lays.append(lay)
      xs.append(x)

  def work(xs):
    out = []
    for lay, x in zip(lays, xs):
      blocks = kr.to_blocks(x, lay)
      stats = kr.factor_statistics(blocks, lay.preconditioned)
      y = blocks
      for _ in range(rotations):
        y = kr.mode_product(y, stats)
      out.append((stats, y))
    return out

  f = jax.jit(work).lower(xs).compile()
  _block(f(xs))
  best = np.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    _block(f(xs))
    best = min(best, time.perf_counter() - t0)
  return best


def _precondition_opt(block_size: int, frequency: int):
  """Google's distributed_shampoo (PyPI precondition-opt), or None."""
  for name in ("tree_map", "tree_flatten", "tree_unflatten", "tree_leaves",
               "tree_structure"):
    if not hasattr(jax, name):
      setattr(jax, name, getattr(jax.tree_util, name))
  try:
    from precondition import distributed_shampoo as ds  # pylint: disable=g-import-not-at-top
  except Exception as err:  # pylint: disable=broad-except
    print(f"precondition-opt not available ({type(err).__name__}: {err}); skipped")
    return None
  return ds.distributed_shampoo(
      learning_rate=1e-3, block_size=block_size, beta1=0.9, beta2=0.999,
      graft_type=ds.GraftingType.RMSPROP_NORMALIZED, nesterov=False,
      exponent_override=2, start_preconditioning_step=1,
      preconditioning_compute_steps=frequency,
      skip_preconditioning_dim_size_gt=1 << 20,
      generate_training_metrics=False)


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--small", action="store_true",
                      help="~4M parameters, block 256 (about a minute)")
  parser.add_argument("--vocab", type=int, default=None)
  parser.add_argument("--d_model", type=int, default=None)
  parser.add_argument("--n_layers", type=int, default=None)
  parser.add_argument("--d_ff", type=int, default=None)
  parser.add_argument("--block_size", type=int, default=None)
  parser.add_argument("--freqs", default="1,10,100")
  parser.add_argument("--steps", type=int, default=2,
                      help="timed root and plain steps each (median)")
  parser.add_argument("--root_method", default="eigh", choices=("eigh", "newton"))
  parser.add_argument("--soap_basis", default="qr", choices=("qr", "eigh"))
  parser.add_argument("--skip_soap", action="store_true")
  parser.add_argument("--precondition_opt", action="store_true",
                      help="also time precondition-opt's distributed_shampoo")
  args = parser.parse_args(argv)
  small = dict(vocab=4096, d_model=256, n_layers=4, d_ff=1024, block_size=256)
  big = dict(vocab=8192, d_model=512, n_layers=8, d_ff=2048, block_size=512)
  cfg = dict(small if args.small else big)
  for k in cfg:
    if getattr(args, k) is not None:
      cfg[k] = getattr(args, k)
  bs = cfg["block_size"]
  freqs = [int(f) for f in args.freqs.split(",")]

  params = gpt_params(cfg["vocab"], cfg["d_model"], cfg["n_layers"], cfg["d_ff"])
  grads = jax.tree.map(lambda p: p * 0.5 + 0.01, params)
  blocks = _matrix_blocks(params, bs)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({os.cpu_count()} cpus); params {num_params(params) / 1e6:.1f}M, "
        f"{len(blocks)} preconditioned blocks (block {bs}), config {cfg}")
  sys.stdout.flush()

  results: Dict[str, Any] = {"config": cfg, "params": num_params(params)}
  t_adam = update_time(optax.adamw(1e-3, weight_decay=0.1), params, grads,
                       steps=max(args.steps, 3))[0]
  results["adamw_s"] = t_adam
  print(f"adamw update: {t_adam * 1e3:.1f} ms")

  opts: Dict[str, Callable[[], Optional[optax.GradientTransformation]]] = {
      "shampoo": lambda: shampoo(1e-3, weight_decay=0.1, block_size=bs,
                                 preconditioning_frequency=2,
                                 root_method=args.root_method),
  }
  if not args.skip_soap:
    opts["soap"] = lambda: soap(1e-3, weight_decay=0.1, block_size=bs,
                                precondition_frequency=2,
                                basis_update=args.soap_basis)
  if args.precondition_opt:
    opts["distributed_shampoo"] = lambda: _precondition_opt(bs, 2)

  for name, make in opts.items():
    tx = make()
    if tx is None:
      continue
    t0 = time.perf_counter()
    try:
      # Phase 0 is an odd step (roots due with frequency 2), phase 1 plain.
      # Warm up through the first (eigh) basis of SOAP before timing.
      phases = update_time(tx, params, grads, steps=args.steps, warmup=1,
                           period=2)
      t_root, t_plain = max(phases), min(phases)
    except Exception as err:  # pylint: disable=broad-except
      print(f"{name}: failed ({type(err).__name__}: {err})")
      continue
    wall = time.perf_counter() - t0
    row = {"root_s": t_root, "plain_s": t_plain}
    for f in freqs:
      row[f"amortised_s_f{f}"] = (t_root + (f - 1) * t_plain) / f
    results[name] = row
    print(f"{name}: root step {t_root:.3f} s, plain step {t_plain:.3f} s "
          f"(compile + timing {wall:.0f} s)")
    sys.stdout.flush()

  print()
  names = [n for n in opts if n in results]
  width = [max(28, len(n) + 12) for n in names]
  print(f"{'root frequency':>16}" + "".join(
      f"{n + ' / adamw':>{w}}" for n, w in zip(names, width)))
  for f in freqs:
    line = f"{f:>16}"
    for n, w in zip(names, width):
      t = results[n][f"amortised_s_f{f}"]
      line += f"{t / t_adam:.1f}x ({t * 1e3:.0f} ms)".rjust(w)
    print(line)
  print(f"(amortised per-step update time = (t_root + (f-1) t_plain) / f; "
        f"adamw {t_adam * 1e3:.1f} ms)")

  # Achieved matmul throughput of the plain steps. The machine may be shared:
  # the peak is the best of several runs, measured twice.
  n_blk = max(1, len(blocks))
  peak_runs = [peak_gflops(bs, min(n_blk, 64))]
  kernels = {}
  for n, rot in (("shampoo", 1), ("soap", 2)):
    if n in results:
      kernels[n] = kernel_time(params, bs, rot)
      peak_runs.append(peak_gflops(bs, min(n_blk, 64)))
  peak = max(peak_runs)
  results["peak_dot_gflops"] = peak
  print(f"\nplain batched jnp.dot of {bs}x{bs} blocks: {peak:.1f} GFLOP/s "
        f"(best of {len(peak_runs)} runs interleaved with the kernels: "
        + ", ".join(f"{p:.1f}" for p in peak_runs) + ")")
  for n, rot in (("shampoo", 1), ("soap", 2)):
    if n not in results:
      continue
    flops = matmul_flops(blocks, rot)
    step_rate = flops / results[n]["plain_s"] / 1e9
    k_rate = flops / kernels[n] / 1e9
    results[n].update(flops_per_step=flops, plain_step_gflops=step_rate,
                      kernel_gflops=k_rate)
    print(f"{n}: {flops / 1e9:.1f} GFLOP of statistics + preconditioning per "
          f"step; whole plain step {step_rate:.1f} GFLOP/s "
          f"({100 * step_rate / peak:.0f}% of jnp.dot), isolated kernels "
          f"{k_rate:.1f} GFLOP/s ({100 * k_rate / peak:.0f}%)")
  return results


if __name__ == "__main__":
  main()
