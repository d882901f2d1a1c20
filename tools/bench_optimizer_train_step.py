r"""Whole train-step cost of Shampoo and SOAP relative to AdamW on the LM.

  python -m tools.bench_optimizer_train_step            # ~30M params, 16k tokens/step
  python -m tools.bench_optimizer_train_step --small    # ~3M params, 4k tokens, ~3 min
  python -m tools.bench_optimizer_train_step --small --batch 32 --block_size 512

The step is the framework's (`framework.train_step.make_train_step` under
`jit_train_step`: forward, backward, gradient clipping, optimizer update,
NaN guard, metrics) on the quickstart transformer (`--config`, default
experiments/configs/lm_quickstart.py) resized by the preset and the size
flags. Optimizers come from `framework.optim.make_optimizer`, as in training.

Shampoo and SOAP are compiled with root (preconditioner / eigenbasis)
frequency 2, so odd steps recompute the roots and even steps do not; t_root
and t_plain are medians over rounds. For frequency f the amortised per-step
time is

    t_f = (t_root + (f - 1) t_plain) / f,

what f consecutive steps cost. Each round runs two steps of every optimizer
in turn, so machine noise (the machine may be shared) hits all alike. The
table gives t_f / t_adamw, the whole-step ratio to AdamW.

--breakdown (default on) also times, on the same parameters, the forward +
backward pass alone and each optimizer's update alone
(`tools.bench_shampoo.update_time`), and counts the factor roots of a root
step by size: that is where the extra time goes.

Roots: by default the optimizers' own defaults: Shampoo's float32 eigh on the
device (--root_method=eigh) and SOAP's QR refresh after a first eigh
(--soap_basis=qr). --root_method=eigh64 / newton and --soap_basis=eigh|eigh64|qr64
select the other paths ('64': numpy float64 eigh on the host via
jax.pure_callback). A step that exceeds --step_timeout_s aborts the run with a
message instead of hanging (jaxlib's batched CPU LAPACK kernels used to
deadlock XLA's intra-op pool inside a root step; `optimizers.kronecker` now
issues them one matrix at a time on CPU).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import collections  # pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import json
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/lm_quickstart.py", "LM config file (schema).")
_SMALL = flags.DEFINE_bool("small", False, "Small preset (~3M params, 4k tokens/step).")
_D_MODEL = flags.DEFINE_integer("d_model", None, "Override the preset's d_model.")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", None, "Override num_layers.")
_D_FF = flags.DEFINE_integer("d_ff", None, "Override d_ff.")
_VOCAB = flags.DEFINE_integer("vocab", None, "Override vocab_size.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Override seq_len.")
_BATCH = flags.DEFINE_integer("batch", None, "Override the global batch size.")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", None, "Shampoo/SOAP block size.")
_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adamw", "shampoo", "soap"],
                                "Optimizers to time (adamw is always the reference).")
_FREQS = flags.DEFINE_list("freqs", ["1", "10", "100"], "Root frequencies to report.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (2 steps each).")
_ROOT_METHOD = flags.DEFINE_enum(
    "root_method", "eigh", ["eigh64", "eigh", "newton"],
    "Shampoo's roots: eigh64 (host float64 eigh), eigh (device float32 LAPACK), "
    "newton (coupled Newton, matmuls only).")
_EXPONENT = flags.DEFINE_string("exponent", "shampoo2", "Shampoo's exponent.")
_SOAP_BASIS = flags.DEFINE_enum(
    "soap_basis", "qr", ["eigh64", "eigh", "qr64", "qr"],
    "SOAP's basis refresh: eigh or the QR step (after a first eigh); '64': that "
    "eigh in float64 on the host.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", True,
                               "Also time fwd+bwd alone and the updates alone.")
_JSON = flags.DEFINE_string("json", "", "Write the results dict to this path.")
_ESTIMATE = flags.DEFINE_bool(
    "estimate", False,
    "Do not run whole train steps: estimate each as forward+backward + the update "
    "alone (for sizes whose whole steps take minutes on this machine).")
_FB_BATCH = flags.DEFINE_integer(
    "fwd_bwd_batch", None, "With --estimate: time forward+backward at this batch "
    "and scale it linearly to --batch (default: --batch itself).")
_STEP_TIMEOUT = flags.DEFINE_float(
    "step_timeout_s", 900.0, "Abort (exit 3) when one step takes longer: a hang.")

# Model/batch presets: `full` is ~30M parameters and 64 x 256 = 16k tokens.
FULL = dict(d_model=512, num_layers=8, num_heads=8, num_kv_heads=2, head_dim=64,
            d_ff=2048, vocab_size=384, seq_len=256, batch=64, block_size=512)
SMALL = dict(d_model=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32,
             d_ff=768, vocab_size=384, seq_len=256, batch=16, block_size=256)


def sizes_from_flags() -> Dict[str, int]:
  s = dict(SMALL if _SMALL.value else FULL)
  for key, flag in (("d_model", _D_MODEL), ("num_layers", _NUM_LAYERS), ("d_ff", _D_FF),
                    ("vocab_size", _VOCAB), ("seq_len", _SEQ_LEN), ("batch", _BATCH),
                    ("block_size", _BLOCK_SIZE)):
    if flag.value is not None:
      s[key] = int(flag.value)
  if _D_MODEL.value is not None:  # keep 8 heads: head_dim follows d_model
    s["head_dim"] = max(1, s["d_model"] // s["num_heads"])
  return s


def optimizer_kwargs(name: str, block_size: int, frequency: int) -> Dict[str, Any]:
  """config.optimizer.kwargs for `name` with root frequency `frequency`."""
  if name == "shampoo":
    method = _ROOT_METHOD.value
    return dict(block_size=block_size, preconditioning_frequency=frequency,
                exponent=_EXPONENT.value,
                root_method="newton" if method == "newton" else "eigh",
                root_float64=method == "eigh64")
  if name == "soap":
    basis = _SOAP_BASIS.value
    return dict(block_size=block_size, precondition_frequency=frequency,
                basis_update="qr" if basis.startswith("qr") else "eigh",
                eigh_float64=basis.endswith("64"))
  return {}


def root_sizes(params: Any, block_size: int) -> Dict[int, int]:
  """{factor size: number of factors} whose roots a root step recomputes."""
  import jax  # pylint: disable=g-import-not-at-top
  from optimizers import kronecker as kr  # pylint: disable=g-import-not-at-top
  out: Dict[int, int] = collections.Counter()
  for x in jax.tree.leaves(params):
    lay = kr.block_layout(x.shape, block_size=block_size)
    if lay.is_diagonal:
      continue
    for b, pre in zip(lay.block_shape, lay.preconditioned):
      if pre:
        out[b] += lay.num_blocks
  return dict(sorted(out.items(), reverse=True))


@contextlib.contextmanager
def watchdog(timeout_s: float, what: str):
  """Ends the process (exit 3) if the body runs longer than timeout_s."""
  def fire():
    print(f"\n{what} did not finish in {timeout_s:.0f} s; aborting (a hang, or a "
          "machine far slower than expected).", file=sys.stderr, flush=True)
    os._exit(3)  # pylint: disable=protected-access
  timer = threading.Timer(timeout_s, fire)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


class Stepper:
  """One optimizer's framework train step, its state and step counter."""

  def __init__(self, name: str, config, model, batch, mesh):
    import jax  # pylint: disable=g-import-not-at-top
    from framework import optim  # pylint: disable=g-import-not-at-top
    from framework import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    from framework import train_state as ts_lib  # pylint: disable=g-import-not-at-top
    from framework import train_step as step_lib  # pylint: disable=g-import-not-at-top
    self.name = name
    schedule = optim.make_schedule(config.schedule, int(config.trainer.total_steps))
    self.tx = optim.make_optimizer(config.optimizer, schedule)
    rules = config.sharding.rules
    self.state, shardings = ts_lib.create_sharded_state(model, self.tx, batch, mesh,
                                                        rules, seed=0)
    self.params = jax.tree.map(lambda x: x.copy(), jax.device_get(self.state.params))
    self.step_fn = step_lib.jit_train_step(
        step_lib.make_train_step(model, self.tx, schedule=schedule), shardings, mesh,
        rules, batch)
    self.batch = sharding_lib.global_batch(batch, mesh)
    self.count = 0
    self.times: Dict[str, List[float]] = {"root": [], "plain": []}

  def step(self, record: bool = True) -> float:
    import jax  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    with watchdog(_STEP_TIMEOUT.value, f"{self.name} step {self.count + 1}"):
      self.state, metrics = self.step_fn(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))
    dt = time.perf_counter() - t0
    self.count += 1
    if record:  # frequency 2 from step 1: odd steps recompute the roots
      self.times["root" if self.count % 2 else "plain"].append(dt)
    return dt


def amortised(t_root: float, t_plain: float, f: int) -> float:
  """Per-step time of f steps of which one recomputes the roots."""
  return (t_root + (f - 1) * t_plain) / f


def ratio_row(t_root: float, t_plain: float, t_adam: float, freqs: Sequence[int],
              offset: float = 0.0) -> Dict[str, float]:
  """{step_s_f<f>, ratio_f<f>}: amortised step time offset + t_f and its ratio to AdamW."""
  row = {}
  for f in freqs:
    tf = offset + amortised(t_root, t_plain, f)
    row[f"step_s_f{f}"] = tf
    row[f"ratio_f{f}"] = tf / t_adam
  return row


def print_ratio_table(results: Dict[str, Any], names: Sequence[str],
                      freqs: Sequence[int]) -> None:
  print(f"{'root frequency':>16}" + "".join(f"{n + ' / adamw':>26}" for n in names))
  for f in freqs:
    print(f"{f:>16}" + "".join(
        f"{results[n][f'ratio_f{f}']:.3f}x ({results[n][f'step_s_f{f}'] * 1e3:.0f} ms)"
        .rjust(26) for n in names))


def _load() -> str:
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def main(argv: Sequence[str]) -> None:
  del argv
  run_benchmark()


def run_benchmark() -> Dict[str, Any]:
  """Runs the benchmark as the flags say; returns the figures as a dict."""
  import jax  # pylint: disable=g-import-not-at-top

  from framework import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from models import registry, transformer  # pylint: disable=g-import-not-at-top

  s = sizes_from_flags()
  config = _CONFIG.value
  with config.unlocked():
    config.model.update({k: s[k] for k in ("d_model", "num_layers", "num_heads",
                                            "num_kv_heads", "head_dim", "d_ff",
                                            "vocab_size")})
    config.data.seq_len = s["seq_len"]
    config.data.global_batch_size = s["batch"]
  mcfg = registry.make_config(config.model)
  model = transformer.TransformerLM(mcfg)
  b, t = s["batch"], s["seq_len"]
  batch = random_batch(b, t)
  mesh = mesh_lib.create_mesh(dict(config.mesh.shape))
  names = ["adamw"] + [n for n in _OPTIMIZERS.value if n != "adamw"]
  freqs = [int(f) for f in _FREQS.value]
  n_params = transformer.count_params(mcfg)["total"]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()} "
        f"({os.cpu_count()} cpus); {_load()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}")
  print(f"model {n_params / 1e6:.1f}M params, batch {b} x {t} = {b * t} tokens/step, "
        f"block {s['block_size']}, sizes {s}; shampoo roots {_ROOT_METHOD.value}, "
        f"exponent {_EXPONENT.value}; soap basis {_SOAP_BASIS.value}")
  sys.stdout.flush()

  steppers: Dict[str, Stepper] = {}
  results: Dict[str, Any] = {"sizes": s, "params": n_params, "tokens_per_step": b * t,
                             "root_method": _ROOT_METHOD.value, "exponent": _EXPONENT.value,
                             "soap_basis": _SOAP_BASIS.value, "load_start": os.getloadavg()}
  if _ESTIMATE.value:
    with watchdog(8 * _STEP_TIMEOUT.value, "the estimate"):
      _estimate(config, model, s, names, freqs, results)
    return _finish(results)

  for name in names:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.optimizer.name = name
      cfg.optimizer.kwargs = optimizer_kwargs(name, s["block_size"], 2)
    st = Stepper(name, cfg, model, batch, mesh)
    t0 = time.perf_counter()
    st.step(record=False)  # compile + step 1 (roots / SOAP's first eigh basis)
    first = time.perf_counter() - t0
    st.step(record=False)  # step 2: warm
    steppers[name] = st
    results.setdefault("first_step_s", {})[name] = first
    print(f"{name}: compile + first step {first:.1f} s")
    sys.stdout.flush()

  for r in range(_ROUNDS.value):
    for name in names:
      steppers[name].step()
      steppers[name].step()
    print(f"round {r + 1}/{_ROUNDS.value}: " + ", ".join(
        f"{n} {steppers[n].times['root'][-1]:.2f}/{steppers[n].times['plain'][-1]:.2f} s"
        for n in names) + f" (root/plain); {_load()}")
    sys.stdout.flush()

  med = {n: {k: statistics.median(v) for k, v in st.times.items()}
         for n, st in steppers.items()}
  # AdamW has no roots: all its steps are plain steps.
  t_adam = statistics.median(steppers["adamw"].times["root"]
                             + steppers["adamw"].times["plain"])
  results["adamw_step_s"] = t_adam
  for n in names[1:]:
    results[n] = {"root_step_s": med[n]["root"], "plain_step_s": med[n]["plain"],
                  **ratio_row(med[n]["root"], med[n]["plain"], t_adam, freqs)}

  print(f"\nwhole train step, adamw: {t_adam * 1e3:.0f} ms "
        f"({b * t / t_adam:.0f} tokens/s)")
  print_ratio_table(results, names[1:], freqs)
  print("(t_f = (t_root + (f-1) t_plain) / f from medians over "
        f"{_ROUNDS.value} alternating rounds)")
  for n in names[1:]:
    print(f"{n}: root step {med[n]['root'] * 1e3:.0f} ms, plain step "
          f"{med[n]['plain'] * 1e3:.0f} ms; plain overhead over adamw "
          f"{(med[n]['plain'] - t_adam) * 1e3:+.0f} ms "
          f"({(med[n]['plain'] / t_adam - 1) * 100:+.1f}%), root extra "
          f"{(med[n]['root'] - med[n]['plain']) * 1e3:.0f} ms")

  if _BREAKDOWN.value:
    with watchdog(4 * _STEP_TIMEOUT.value, "the breakdown"):
      _breakdown(results, steppers, model, batch, s, t_adam, names)
  return _finish(results)


def _finish(results: Dict[str, Any]) -> Dict[str, Any]:
  results["load_end"] = os.getloadavg()
  print(f"\n{_load()}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2, default=str)
  return results


def random_batch(b: int, t: int, seed: int = 0) -> Dict[str, Any]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return {
      "inputs": rng.integers(3, 259, (b, t)).astype(np.int32),
      "targets": rng.integers(3, 259, (b, t)).astype(np.int32),
      "weights": np.ones((b, t), np.int32),
      "segment_ids": np.ones((b, t), np.int32),
      "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
  }


def _time_fwd_bwd(model, params, batch, reps: int):
  """(median seconds of a jitted value_and_grad of the mean loss, grads)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def loss_fn(p, bt):
    sums = model.apply({"params": p}, bt, method="loss")
    return sums["loss"] / sums["tokens"]

  grad_fn = jax.jit(jax.value_and_grad(loss_fn))
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  _, grads = jax.block_until_ready(grad_fn(params, jb))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(grad_fn(params, jb))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), grads


def _estimate(config, model, s, names, freqs, results) -> None:
  """Whole step ~ fwd+bwd + update alone, each timed on its own."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from framework import optim  # pylint: disable=g-import-not-at-top
  from tools import bench_shampoo  # pylint: disable=g-import-not-at-top
  fb_batch = _FB_BATCH.value or s["batch"]
  batch = random_batch(fb_batch, s["seq_len"])
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  params = jax.jit(lambda r: nn.meta.unbox(model.init(r, jb, method="loss")["params"]))(
      jax.random.PRNGKey(0))
  reps = max(2, _ROUNDS.value)
  t_meas, grads = _time_fwd_bwd(model, params, batch, reps)
  t_fb = t_meas * s["batch"] / fb_batch
  results["fwd_bwd_s"] = t_fb
  print(f"forward + backward: {t_meas * 1e3:.0f} ms at batch {fb_batch}"
        + (f", scaled to batch {s['batch']}: {t_fb * 1e3:.0f} ms" if fb_batch != s["batch"]
           else "") + f" ({_load()})")
  sys.stdout.flush()
  schedule = optim.make_schedule(config.schedule, int(config.trainer.total_steps))
  upd = {}
  for n in names:
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.optimizer.name = n
      cfg.optimizer.kwargs = optimizer_kwargs(n, s["block_size"], 2)
    tx = optim.make_optimizer(cfg.optimizer, schedule)
    if n == "adamw":
      t = bench_shampoo.update_time(tx, params, grads, steps=reps)[0]
      upd[n] = (t, t)
    else:
      phases = bench_shampoo.update_time(tx, params, grads, steps=reps, warmup=1, period=2)
      upd[n] = (phases[0], phases[1])  # phase 0: roots due (odd step)
    print(f"{n} update alone: plain {upd[n][1] * 1e3:.0f} ms, root {upd[n][0] * 1e3:.0f} ms "
          f"({_load()})")
    sys.stdout.flush()
  t_adam = t_fb + upd["adamw"][1]
  results["adamw_step_s"] = t_adam
  results["adamw_update_s"] = upd["adamw"][1]
  for n in names[1:]:
    results[n] = {"update_root_s": upd[n][0], "update_plain_s": upd[n][1],
                  **ratio_row(upd[n][0], upd[n][1], t_adam, freqs, offset=t_fb)}
  print(f"\nESTIMATED whole train step (fwd+bwd + update alone), adamw: "
        f"{t_adam * 1e3:.0f} ms")
  print_ratio_table(results, names[1:], freqs)
  counts = root_sizes(params, s["block_size"])
  results["root_factor_sizes"] = counts
  print(f"a root step recomputes {sum(counts.values())} factor roots (size: count) {counts}")


def _breakdown(results, steppers, model, batch, s, t_adam, names) -> None:
  """Times fwd+bwd alone and every optimizer's update alone; counts roots."""
  from tools import bench_shampoo  # pylint: disable=g-import-not-at-top
  params = steppers["adamw"].params
  t_fb, grads = _time_fwd_bwd(model, params, batch, max(2, _ROUNDS.value))
  results["fwd_bwd_s"] = t_fb
  print(f"\nwhere the time goes ({_load()}):")
  print(f"  forward + backward alone: {t_fb * 1e3:.0f} ms "
        f"({t_fb / t_adam * 100:.0f}% of the adamw step)")
  for n in names:
    tx = steppers[n].tx
    if n == "adamw":
      up = bench_shampoo.update_time(tx, params, grads, steps=max(2, _ROUNDS.value))
      results["adamw_update_s"] = up[0]
      print(f"  adamw update alone: {up[0] * 1e3:.0f} ms")
      continue
    phases = bench_shampoo.update_time(tx, params, grads, steps=max(2, _ROUNDS.value),
                                       warmup=1, period=2)
    # Phase 0 is an odd step (roots due), phase 1 a plain step.
    results[n].update(update_root_s=phases[0], update_plain_s=phases[1])
    print(f"  {n} update alone: plain {phases[1] * 1e3:.0f} ms, root "
          f"{phases[0] * 1e3:.0f} ms")
  counts = root_sizes(params, s["block_size"])
  results["root_factor_sizes"] = counts
  print(f"  a root step recomputes {sum(counts.values())} factor roots "
        f"(size: count) {counts}")


if __name__ == "__main__":
  app.run(main)
