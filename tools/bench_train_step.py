r"""Train-step benchmark: the framework's step next to a plain JAX/Flax step.

  python -m tools.bench_train_step                       # small: the quickstart LM, 16x256
  python -m tools.bench_train_step --shape=medium        # ~32M parameters, 2x256
      [--rounds=7] [--steps_per_round=3] [--dtype=float32|bfloat16]

Both steps train the same `models.transformer.TransformerLM` (built through
`models.registry`) from the same parameters on the same batch with the same
optax transformation (AdamW + global-norm clipping, warmup-cosine lr):

  framework: `framework.train_step.make_train_step` under `jit_train_step`
             (explicit in/out shardings, logical-axis rules, state donated,
             finite guard, grad-norm / lr metrics);
  plain:     its own `jax.jit(value_and_grad(L) + tx.update + apply_updates)`
             with L(theta) = sum_i w_i l_i(theta) / sum_i w_i, parameters and
             optimizer state donated; no framework code.

Timing. The two run interleaved in `rounds` rounds; round r runs them in an
order rotated by r (so neither always goes first). Each turn runs one untimed
warm-up step (the first step after the other program ran finds cold caches),
then times `steps_per_round` consecutive steps and divides by their number.
Round r gives the ratio

    rho_r = t_plain,r / t_framework,r      (> 1: the framework step is faster),

and the summary prints the median of rho_r with its min-max range and
interquartile range, the median per-step times, tokens/s (tokens = B T) and
MFU (FLOP convention in `models.transformer.flops_per_token`).

Memory. Peak memory per step comes from XLA's own accounting of each compiled
program, `jitted.lower(...).compile().memory_analysis()`:
temp_size_in_bytes + argument_size_in_bytes + output_size_in_bytes; the
alias_size_in_bytes (outputs written in place of donated inputs) is printed
too, since argument + output - alias + temp is what the step needs at once.

The machine may be shared: the 1-minute load average is printed at start and
end, with a warning when it is above 1.5 (the timings are then noise-bound).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence

from absl import app, flags
import numpy as np

LOAD_WARNING = 1.5

# Model fields per shape (TransformerConfig) and batch (B, T).
SHAPES: Dict[str, Dict[str, Any]] = {
    "small": dict(model=dict(vocab_size=384, d_model=256, num_layers=4, num_heads=8,
                             num_kv_heads=2, head_dim=32, d_ff=768),
                  batch_size=16, seq_len=256),
    "medium": dict(model=dict(vocab_size=384, d_model=512, num_layers=8, num_heads=8,
                              num_kv_heads=4, head_dim=64, d_ff=2048),
                   batch_size=2, seq_len=256),
    # For the unit test only: compiles in about a second.
    "tiny": dict(model=dict(vocab_size=128, d_model=32, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=16, d_ff=64),
                 batch_size=2, seq_len=16),
}

def _define_flags():
  """Flags exist only when this runs as a program, so importing it (tests) defines none."""
  global _SHAPE, _ROUNDS, _STEPS, _DTYPE, _PEAK
  _SHAPE = flags.DEFINE_enum("shape", "small", ["small", "medium"], "Model and batch shape.")
  _ROUNDS = flags.DEFINE_integer("rounds", 7, "Interleaved measurement rounds (>= 7 advised).")
  _STEPS = flags.DEFINE_integer("steps_per_round", 3, "Timed steps per program per round.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                             "Compute dtype (parameters stay float32).")
  _PEAK = flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s of the device for MFU "
                             "(0: vendor table, or measured matmul on CPU).")


def spread(values: Sequence[float]) -> Dict[str, float]:
  """Median, min, max, quartiles (linear interpolation) and IQR of a sample."""
  v = np.asarray(values, np.float64)
  q25, q75 = float(np.percentile(v, 25)), float(np.percentile(v, 75))
  return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
          "q25": q25, "q75": q75, "iqr": q75 - q25, "n": int(v.size)}


def rotated(names: Sequence[str], r: int) -> List[str]:
  """The order of round r: `names` rotated left by r."""
  k = r % len(names)
  return list(names[k:]) + list(names[:k])


def interleave(runners: Mapping[str, Callable[[int], Any]], rounds: int, steps: int,
               clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
  """Per-step seconds of each runner, one entry per round.

  runners[name](n) runs n steps and blocks until they are done. Each turn is
  one untimed warm-up step, then `steps` timed steps; the order rotates.
  """
  names = list(runners)
  times: Dict[str, List[float]] = {n: [] for n in names}
  for r in range(rounds):
    for name in rotated(names, r):
      runners[name](1)
      t0 = clock()
      runners[name](steps)
      times[name].append((clock() - t0) / steps)
  return times


def ratio_summary(times: Mapping[str, Sequence[float]], num: str = "plain",
                  den: str = "framework") -> Dict[str, float]:
  """spread of the per-round ratio times[num][r] / times[den][r]."""
  return spread([a / b for a, b in zip(times[num], times[den])])


def memory_bytes(compiled) -> Dict[str, int] | None:
  """XLA's memory analysis of a compiled program (None if the backend has none)."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError):
    return None
  if m is None:
    return None
  out = {f: int(getattr(m, f"{f}_size_in_bytes", 0) or 0)
         for f in ("temp", "argument", "output", "alias")}
  out["peak"] = out["temp"] + out["argument"] + out["output"]
  return out


def optimizer_configs():
  """AdamW + clipping + warmup-cosine, as in the LM quickstart config."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  opt = ml_collections.ConfigDict(dict(name="adamw", b1=0.9, b2=0.95, eps=1e-8,
                                       weight_decay=0.1, grad_clip_norm=1.0,
                                       momentum=0.9, kwargs={}))
  sched = ml_collections.ConfigDict(dict(name="warmup_cosine", peak_lr=3e-3,
                                         warmup_steps=20, end_lr_fraction=0.1))
  return opt, sched, 1000


def make_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> Dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  hi = min(vocab, 259)
  return {
      "inputs": rng.integers(3, hi, (batch_size, seq_len)).astype(np.int32),
      "targets": rng.integers(3, hi, (batch_size, seq_len)).astype(np.int32),
      "weights": np.ones((batch_size, seq_len), np.int32),
      "segment_ids": np.ones((batch_size, seq_len), np.int32),
      "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1)),
  }


class Bench:
  """The two steps of one shape, each holding its own (donated) state."""

  def __init__(self, shape: str = "small", dtype: str = "float32", seed: int = 0):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top

    from framework import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    from framework import optim  # pylint: disable=g-import-not-at-top
    from framework import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    from framework import train_state as ts_lib  # pylint: disable=g-import-not-at-top
    from framework import train_step as step_lib  # pylint: disable=g-import-not-at-top
    from models import registry, transformer  # pylint: disable=g-import-not-at-top

    spec = SHAPES[shape]
    self.model_cfg = registry.make_config(dict(name="transformer", dtype=dtype, **spec["model"]))
    self.batch_size, self.seq_len = spec["batch_size"], spec["seq_len"]
    self.num_params = transformer.count_params(self.model_cfg)["total"]
    self.tokens = self.batch_size * self.seq_len
    module = transformer.TransformerLM(self.model_cfg)
    batch = make_batch(self.batch_size, self.seq_len, self.model_cfg.vocab_size, seed)
    opt_cfg, sched_cfg, total = optimizer_configs()
    schedule = optim.make_schedule(sched_cfg, total)
    tx = optim.make_optimizer(opt_cfg, schedule)
    # One device for both: the plain step runs on jax.devices()[0].
    mesh = mesh_lib.create_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    rules = sharding_lib.DEFAULT_RULES
    self.mesh = mesh

    # Framework step.
    self.state, shardings = ts_lib.create_sharded_state(module, tx, batch, mesh, rules, seed=seed)
    self.fw_step = step_lib.jit_train_step(step_lib.make_train_step(module, tx, schedule=schedule),
                                           shardings, mesh, rules, batch)
    self.fw_batch = sharding_lib.global_batch(batch, mesh)

    # Plain step: same module, parameters and optax transformation; nothing else.
    self.params = jax.tree.map(jnp.copy, jax.device_get(self.state.params))
    self.opt_state = tx.init(self.params)

    def loss_fn(p, bt):
      sums = module.apply({"params": p}, bt, method="loss")
      return sums["loss"] / sums["tokens"]

    def plain_step(p, o, bt):
      loss, grads = jax.value_and_grad(loss_fn)(p, bt)
      updates, o = tx.update(grads, o, p)
      return optax.apply_updates(p, updates), o, loss

    self.plain_step = jax.jit(plain_step, donate_argnums=(0, 1))
    self.plain_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    self._jax = jax

  def framework(self, n: int):
    """n framework steps; returns the last step's loss (blocked)."""
    for _ in range(n):
      self.state, metrics = self.fw_step(self.state, self.fw_batch)
    return self._jax.block_until_ready(metrics["loss"])

  def plain(self, n: int):
    """n plain steps; returns the last step's loss (blocked)."""
    for _ in range(n):
      self.params, self.opt_state, loss = self.plain_step(self.params, self.opt_state,
                                                          self.plain_batch)
    return self._jax.block_until_ready(loss)

  def memory(self) -> Dict[str, Dict[str, int] | None]:
    return {
        "framework": memory_bytes(self.fw_step.lower(self.state, self.fw_batch).compile()),
        "plain": memory_bytes(self.plain_step.lower(self.params, self.opt_state,
                                                    self.plain_batch).compile()),
    }


def _load() -> float:
  return os.getloadavg()[0]


def _mib(x: float) -> str:
  return f"{x / 2**20:8.1f}"


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from framework import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from models import transformer  # pylint: disable=g-import-not-at-top
  load0 = _load()
  print(f"load average (1 min) at start: {load0:.2f}")
  if load0 > LOAD_WARNING:
    print(f"WARNING: load average {load0:.2f} > {LOAD_WARNING}: the machine is busy; "
          "the timings below are not trustworthy.")
  if _ROUNDS.value < 7:
    print(f"note: {_ROUNDS.value} rounds (< 7): the spread is a rough guide only.")
  bench = Bench(_SHAPE.value, _DTYPE.value)
  print(f"shape {_SHAPE.value}: {bench.num_params:,} parameters "
        f"(d_model {bench.model_cfg.d_model}, {bench.model_cfg.num_layers} layers, "
        f"d_ff {bench.model_cfg.d_ff}, vocab {bench.model_cfg.vocab_size}), dtype {_DTYPE.value}, "
        f"batch {bench.batch_size}x{bench.seq_len} = {bench.tokens} tokens/step, "
        f"one {jax.devices()[0].device_kind} device")
  fpt = transformer.flops_per_token(bench.model_cfg, bench.seq_len)
  peak, source = flops_lib.peak_flops_per_device(_PEAK.value)
  print(f"{fpt / 1e6:.2f} MFLOP/token (6N + causal attention + head); device peak "
        f"{peak / 1e9:.1f} GFLOP/s ({source})")
  mem = bench.memory()
  runners = {"framework": bench.framework, "plain": bench.plain}
  compile_s = {}
  for name, fn in runners.items():
    t0 = time.perf_counter()
    fn(1)
    compile_s[name] = time.perf_counter() - t0
  times = interleave(runners, _ROUNDS.value, _STEPS.value)
  load1 = _load()

  print(f"\n{_ROUNDS.value} rounds x {_STEPS.value} timed steps (after 1 untimed), rotating order")
  print(f"{'':11s}{'step ms':>9s}{'(min-max)':>17s}{'tokens/s':>10s}{'MFU':>7s}{'1st call s':>11s}"
        f"{'peak MiB':>10s}{'temp':>9s}{'arg':>9s}{'out':>9s}{'alias':>9s}")
  for name in runners:
    s = spread(times[name])
    m = mem[name]
    mem_cols = ("".join(f"{_mib(m[f]):>{10 if f == 'peak' else 9}s}"
                        for f in ("peak", "temp", "argument", "output", "alias"))
                if m else "   (no memory analysis on this backend)")
    print(f"{name:11s}{s['median'] * 1e3:9.1f}  ({s['min'] * 1e3:6.1f}-{s['max'] * 1e3:6.1f})"
          f"{bench.tokens / s['median']:10.0f}{fpt * bench.tokens / s['median'] / peak:7.1%}"
          f"{compile_s[name]:11.1f}{mem_cols}")
  print("peak = temp + argument + output bytes of XLA's memory_analysis() of the compiled step "
        "(alias: outputs that reuse donated inputs)")
  r = ratio_summary(times)
  print(f"ratio plain/framework step time (> 1: framework faster): median {r['median']:.3f}, "
        f"min-max {r['min']:.3f}-{r['max']:.3f}, IQR {r['q25']:.3f}-{r['q75']:.3f} "
        f"({r['iqr']:.3f}), n={r['n']}")
  print("per-round ratios: " + ", ".join(
      f"{a / b:.3f}" for a, b in zip(times["plain"], times["framework"])))
  print(f"load average (1 min) at end: {load1:.2f}")
  if max(load0, load1) > LOAD_WARNING:
    print(f"WARNING: load average above {LOAD_WARNING} during the run: the machine is "
          "shared, so these figures are noisy; rerun in a quiet window.")


if __name__ == "__main__":
  _define_flags()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  app.run(main)
