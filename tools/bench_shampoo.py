r"""Optimizer-step cost of Shampoo and SOAP relative to AdamW on a GPT-like tree.

  python -m tools.bench_shampoo            # ~30M parameters, block 512
  python -m tools.bench_shampoo --small    # ~4M parameters, block 256, a few minutes
  python -m tools.bench_shampoo --d_model 768 --n_layers 12 --vocab 32768

Times one optimizer step -- jitted `tx.update` + `optax.apply_updates`, with
the parameters and the optimizer state donated, as the trainer's step does
(gradients given) -- of AdamW, Shampoo and SOAP, and prints their ratio to
AdamW for root (preconditioner / eigenbasis) frequencies 1, 10 and 100.

Fairness: the optimizers run interleaved, round by round: each round runs
consecutive steps of every optimizer, in an order rotated every round, so a
change in machine load hits all of them alike (the machine may be shared:
the load average is printed). Shampoo and SOAP are compiled with frequency
2, so odd steps recompute the roots (t_root) and even steps do not
(t_plain); the amortised per-step time for frequency f,

    t_f = (t_root + (f - 1) t_plain) / f,

is what f consecutive steps cost, without running 100 of them. Each turn
starts with one untimed step (the first step after another optimizer ran
finds cold caches), then times two. Each round gives a ratio t_f / t_adamw
(AdamW: the mean of its two timed steps in the same round); the table prints
the median over rounds with the min-max range and the interquartile range.

It also reports the achieved GFLOP/s of the matmul work of a plain step
(factor statistics + preconditioning, counted analytically per block) both
for the whole plain step and for the isolated kernels, against a plain
batched `jnp.dot` of blocks of the same size on the same machine.

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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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
                state=None, donate: bool = False) -> Sequence[float]:
  """Seconds per jitted `tx.update` call, per phase of a period.

  Runs warmup + steps * period updates with fixed gradients and returns,
  for each phase p < period, the median time of the calls whose step index
  is congruent to p (e.g. period=2 separates root and plain steps of an
  optimizer with frequency 2). Compilation is excluded (done before timing).
  donate: donate the state (a fresh copy of it) to each call.
  Comparing optimizers this way, one after the other, is only fair on an
  otherwise idle machine; `interleaved_step_times` is the fair comparison.
  """
  grads = params if grads is None else grads
  state = tx.init(params) if state is None else state
  if donate:
    state = jax.tree.map(jnp.copy, state)
  upd = jax.jit(tx.update, donate_argnums=(1,) if donate else ())
  upd = upd.lower(grads, state, params).compile()
  times = [[] for _ in range(period)]
  for i in range(warmup * period + steps * period):
    t0 = time.perf_counter()
    u, state = upd(grads, state, params)
    _block((u, state))
    if i >= warmup * period:
      times[i % period].append(time.perf_counter() - t0)
  return [float(np.median(t)) for t in times]


class Stepper:
  """One optimizer's donated step: params, state <- step(params, state, grads).

  The step is `tx.update` + `optax.apply_updates` under one jit with the
  parameters and the state donated (as the trainer's step), compiled ahead
  of time; the stepper keeps its own copy of the parameters.
  """

  def __init__(self, tx: optax.GradientTransformation, params, grads):
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    self.params = jax.tree.map(jnp.copy, params)
    self.state = tx.init(self.params)
    self.grads = grads
    self.steps = 0
    self._fn = jax.jit(step, donate_argnums=(0, 1)).lower(
        self.params, self.state, grads).compile()

  def step(self) -> float:
    """Runs one step; returns its wall time in seconds."""
    t0 = time.perf_counter()
    self.params, self.state = self._fn(self.params, self.state, self.grads)
    _block((self.params, self.state))
    self.steps += 1
    return time.perf_counter() - t0


def interleaved_step_times(steppers: Dict[str, Stepper], rounds: int, *,
                           steps_per_round: int = 2, rewarm: int = 1,
                           warmup: int = 2,
                           log: Optional[Callable[[str], None]] = None
                           ) -> Dict[str, List[List[Tuple[int, float]]]]:
  """Timed steps per optimizer and round: {name: [[(step, seconds), ...]]}.

  `step` is the 1-based number of the step in that optimizer's run. After
  `warmup` steps of each, every round gives each optimizer a turn of
  `rewarm` untimed steps (the first step after another optimizer ran finds
  cold caches: ~10 ms on CPU, as much as a whole small AdamW step) and then
  `steps_per_round` timed ones. Round r starts with optimizer r mod n, so
  none always runs first or right after the same other one.
  """
  for s in steppers.values():
    for _ in range(warmup):
      s.step()
  names = list(steppers)
  times: Dict[str, List[List[Tuple[int, float]]]] = {n: [] for n in names}
  for r in range(rounds):
    k = r % len(names)
    order = names[k:] + names[:k]
    for n in order:
      for _ in range(rewarm):
        steppers[n].step()
      turn = []
      for _ in range(steps_per_round):
        t = steppers[n].step()
        turn.append((steppers[n].steps, t))
      times[n].append(turn)
    if log is not None:
      log(f"round {r + 1}/{rounds} (order {', '.join(order)}; load "
          f"{os.getloadavg()[0]:.1f}): " + ", ".join(
              f"{n} " + "/".join(f"{t * 1e3:.0f}" for _, t in times[n][-1]) + " ms"
              for n in names))
  return times


def spread(values: Sequence[float]) -> Dict[str, float]:
  """Median, min, max and quartiles of a sample."""
  v = np.asarray(values, np.float64)
  return {"median": float(np.median(v)), "min": float(v.min()),
          "max": float(v.max()), "q25": float(np.percentile(v, 25)),
          "q75": float(np.percentile(v, 75)), "n": int(v.size)}


def ratios(times: Dict[str, List[List[Tuple[int, float]]]], name: str,
           freqs: Sequence[int], reference: str = "adamw",
           is_root: Callable[[int], bool] = lambda step: step % 2 == 1
           ) -> Dict[str, Any]:
  """Per-round amortised step time of `name` over `reference`'s, summarised.

  Round r: t_ref = mean of the reference's timed steps; t_root, t_plain =
  mean of `name`'s timed steps with is_root(step) true / false (frequency
  2 from step 1: odd steps recompute the roots); t_f = (t_root + (f-1)
  t_plain) / f. Returns medians of t_root, t_plain, t_f and the spread of
  t_f / t_ref over the rounds.
  """
  ref = [float(np.mean([t for _, t in turn])) for turn in times[reference]]
  root, plain = [], []
  for turn in times[name]:
    r = [t for step, t in turn if is_root(step)]
    p = [t for step, t in turn if not is_root(step)]
    if not r or not p:
      raise ValueError(f"round without both a root and a plain step of {name}: {turn}")
    root.append(float(np.mean(r)))
    plain.append(float(np.mean(p)))
  row: Dict[str, Any] = {"root_s": float(np.median(root)),
                         "plain_s": float(np.median(plain))}
  for f in freqs:
    amort = [(r + (f - 1) * p) / f for r, p in zip(root, plain)]
    row[f"amortised_s_f{f}"] = float(np.median(amort))
    row[f"ratio_f{f}"] = spread([a / t for a, t in zip(amort, ref)])
  return row


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
                      help="~4M parameters, block 256 (a few minutes)")
  parser.add_argument("--vocab", type=int, default=None)
  parser.add_argument("--d_model", type=int, default=None)
  parser.add_argument("--n_layers", type=int, default=None)
  parser.add_argument("--d_ff", type=int, default=None)
  parser.add_argument("--block_size", type=int, default=None)
  parser.add_argument("--freqs", default="1,10,100")
  parser.add_argument("--rounds", type=int, default=7,
                      help="interleaved rounds (>= 5; each: 2 steps per optimizer)")
  parser.add_argument("--root_method", default="eigh", choices=("eigh", "newton"))
  parser.add_argument("--soap_basis", default="qr", choices=("qr", "eigh"))
  parser.add_argument("--skip_soap", action="store_true")
  parser.add_argument("--precondition_opt", action="store_true",
                      help="also time precondition-opt's distributed_shampoo")
  args = parser.parse_args(argv)
  if args.rounds < 5:
    parser.error("--rounds must be at least 5 for a median with a spread")
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
  load0 = os.getloadavg()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({os.cpu_count()} cpus, load average {load0[0]:.1f} {load0[1]:.1f} "
        f"{load0[2]:.1f}); params {num_params(params) / 1e6:.1f}M, "
        f"{len(blocks)} preconditioned blocks (block {bs}), config {cfg}")
  sys.stdout.flush()

  results: Dict[str, Any] = {"config": cfg, "params": num_params(params),
                             "load_average_start": load0}
  opts: Dict[str, Callable[[], Optional[optax.GradientTransformation]]] = {
      "adamw": lambda: optax.adamw(1e-3, weight_decay=0.1),
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

  steppers: Dict[str, Stepper] = {}
  for name, make in opts.items():
    tx = make()
    if tx is None:
      continue
    t0 = time.perf_counter()
    try:
      steppers[name] = Stepper(tx, params, grads)
    except Exception as err:  # pylint: disable=broad-except
      print(f"{name}: failed ({type(err).__name__}: {err})")
      continue
    print(f"{name}: compiled in {time.perf_counter() - t0:.0f} s")
    sys.stdout.flush()

  # Warm-up: 2 steps each (SOAP's first basis is an eigh). With frequency 2
  # the odd steps of Shampoo / SOAP recompute the roots: each round times one
  # odd and one even step of each (after one untimed step).
  times = interleaved_step_times(
      steppers, args.rounds,
      log=lambda line: (print(line), sys.stdout.flush()))
  results["times_s"] = times
  t_adam = float(np.median([np.mean([t for _, t in turn]) for turn in times["adamw"]]))
  results["adamw_s"] = t_adam
  names = [n for n in steppers if n != "adamw"]
  for n in names:
    results[n] = ratios(times, n, freqs)
    print(f"{n}: root step {results[n]['root_s'] * 1e3:.0f} ms, plain step "
          f"{results[n]['plain_s'] * 1e3:.0f} ms (medians); adamw "
          f"{t_adam * 1e3:.1f} ms")
  load1 = os.getloadavg()
  results["load_average_end"] = load1

  print(f"\nstep time / adamw's, median over {args.rounds} interleaved rounds "
        "[min-max] (interquartile range):")
  width = [max(36, len(n) + 12) for n in names]
  print(f"{'root frequency':>16}" + "".join(
      f"{n + ' / adamw':>{w}}" for n, w in zip(names, width)))
  for f in freqs:
    line = f"{f:>16}"
    for n, w in zip(names, width):
      r = results[n][f"ratio_f{f}"]
      line += (f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] "
               f"({r['q25']:.2f}-{r['q75']:.2f})").rjust(w)
    print(line)
  print(f"(step = update + apply_updates, params and state donated; amortised "
        f"t_f = (t_root + (f-1) t_plain) / f; adamw {t_adam * 1e3:.1f} ms; load "
        f"average {load0[0]:.1f} at start, {load1[0]:.1f} at end, {os.cpu_count()} cpus)")

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
