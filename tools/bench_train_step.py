"""Train-step benchmark: the framework's step next to a plain JAX/Flax step.

  python -m tools.bench_train_step --config=experiments/configs/lm_quickstart.py \
      [--config.model.dtype=bfloat16] [--rounds=5] [--steps_per_round=5]

Both steps train the same model on the same batch with the same optimizer:
  framework: `framework.train_step` under jit with explicit in/out shardings,
             donation, logical-axis constraints, grad-norm / NaN-guard metrics;
  reference: `jax.jit(value_and_grad(mean loss) + optax.update)`, nothing else.
Rounds alternate between the two so machine noise hits both alike; the
figures are medians over rounds. Prints tokens/s, step time, peak memory and
MFU (FLOP convention in `models.transformer.flops_per_token`) and the ratio
framework / reference (1.0 = no overhead).
"""
from __future__ import annotations

import os
import resource
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/lm_quickstart.py",
                                          "LM config file.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating measurement rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 5, "Steps per round.")


def _peak_memory_bytes() -> float:
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # host RSS on CPU


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from framework import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from framework import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from framework import optim  # pylint: disable=g-import-not-at-top
  from framework import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from framework import train_state as ts_lib  # pylint: disable=g-import-not-at-top
  from framework import train_step as step_lib  # pylint: disable=g-import-not-at-top
  from models import registry, transformer  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  mesh_lib.resolve_mesh_shape(dict(config.mesh.shape), jax.device_count())
  mcfg = registry.make_config(config.model)
  model = transformer.TransformerLM(mcfg)
  b, t = int(config.data.global_batch_size), int(config.data.seq_len)
  rng = np.random.default_rng(0)
  batch = {
      "inputs": rng.integers(3, 259, (b, t)).astype(np.int32),
      "targets": rng.integers(3, 259, (b, t)).astype(np.int32),
      "weights": np.ones((b, t), np.int32),
      "segment_ids": np.ones((b, t), np.int32),
      "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
  }
  schedule = optim.make_schedule(config.schedule, int(config.trainer.total_steps))
  tx = optim.make_optimizer(config.optimizer, schedule)
  mesh = mesh_lib.create_mesh(dict(config.mesh.shape))
  rules = config.sharding.rules

  # Framework step.
  state, shardings = ts_lib.create_sharded_state(model, tx, batch, mesh, rules, seed=0)
  fw_step = step_lib.jit_train_step(
      step_lib.make_train_step(model, tx, schedule=schedule,
                               num_microbatches=int(config.trainer.num_microbatches)),
      shardings, mesh, rules, batch)
  fw_batch = sharding_lib.global_batch(batch, mesh)

  # Plain reference step: same model, loss and optimizer; no framework.
  params = jax.tree.map(jnp.copy, jax.device_get(state.params))
  opt_state = tx.init(params)

  def ref_loss(p, bt):
    sums = model.apply({"params": p}, bt, method="loss")
    return sums["loss"] / sums["tokens"]

  @jax.jit
  def ref_step(p, o, bt):
    loss, grads = jax.value_and_grad(ref_loss)(p, bt)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  ref_batch = {k: jnp.asarray(v) for k, v in batch.items()}

  def run_fw(n):
    nonlocal state
    for _ in range(n):
      state, m = fw_step(state, fw_batch)
    jax.block_until_ready(m)

  def run_ref(n):
    nonlocal params, opt_state
    for _ in range(n):
      params, opt_state, loss = ref_step(params, opt_state, ref_batch)
    jax.block_until_ready(loss)

  t0 = time.perf_counter(); run_fw(1); fw_compile = time.perf_counter() - t0
  t0 = time.perf_counter(); run_ref(1); ref_compile = time.perf_counter() - t0
  times = {"framework": [], "reference": []}
  for _ in range(_ROUNDS.value):
    for name, fn in (("framework", run_fw), ("reference", run_ref)):
      t0 = time.perf_counter()
      fn(_STEPS.value)
      times[name].append((time.perf_counter() - t0) / _STEPS.value)

  tokens = b * t
  fpt = transformer.flops_per_token(mcfg, t)
  peak, source = flops_lib.peak_flops_per_device(float(config.trainer.peak_flops))
  n_dev = mesh.devices.size
  print(f"\nmodel: {transformer.count_params(mcfg)['total']:,} params, dtype "
        f"{config.model.dtype}, batch {b}x{t} = {tokens} tokens/step, mesh {dict(mesh.shape)}")
  print(f"device: {jax.devices()[0].device_kind} x{n_dev}; peak {peak / 1e9:.1f} GFLOP/s/device "
        f"({source}); {fpt / 1e6:.2f} MFLOP/token (6N + causal attention + head)")
  print(f"{'':12s}{'step ms':>10s}{'tokens/s':>12s}{'MFU':>8s}{'compile s':>11s}")
  rows = {}
  for name, compile_s in (("framework", fw_compile), ("reference", ref_compile)):
    step = statistics.median(times[name])
    tps = tokens / step
    rows[name] = tps
    print(f"{name:12s}{step * 1e3:10.1f}{tps:12.0f}{fpt * tps / (n_dev * peak):8.1%}"
          f"{compile_s:11.1f}")
  print(f"peak memory: {_peak_memory_bytes() / 2**20:.0f} MiB (process)")
  print(f"ratio framework/reference tokens/s: {rows['framework'] / rows['reference']:.3f} "
        f"(per-round: {[round(r / f, 3) for f, r in zip(times['framework'], times['reference'])]})")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  app.run(main)
