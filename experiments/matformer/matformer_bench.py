"""Benchmark: compiled FLOPs and forward tokens/s of every MatFormer granularity.

  python -m experiments.matformer.matformer_bench --shape=small
  python -m experiments.matformer.matformer_bench --shape=quickstart --batch=16 --seq_len=256

Prints, per granularity m (uniform widths), the forward FLOPs from XLA's cost
analysis of the compiled function, the analytic training FLOPs per token
(`matformer.flops_per_token`) and the measured forward tokens/s, each with its
ratio to the universal model. Parameters are a random initialisation (FLOPs
and speed do not depend on their values).
"""
from __future__ import annotations

import sys

from absl import app, flags

SHAPES = {
    # name: MatFormerConfig fields
    "tiny": dict(vocab_size=384, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, d_ff=128),
    "small": dict(vocab_size=384, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
                  head_dim=32, d_ff=512),
    "quickstart": dict(vocab_size=384, d_model=256, num_layers=4, num_heads=8, num_kv_heads=2,
                       head_dim=32, d_ff=768),
}

_SHAPE = flags.DEFINE_enum("shape", "small", list(SHAPES), "model shape")
_BATCH = flags.DEFINE_integer("batch", 8, "sequences per forward")
_SEQ = flags.DEFINE_integer("seq_len", 128, "tokens per sequence")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed forwards per granularity (median)")


def table(rows) -> str:
  lines = ["| m (d_ff) | compiled GFLOPs | ratio | analytic ratio | tokens/s | ratio |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['granularity']} | {r['flops'] / 1e9:.3f} | {r['flops_ratio']:.3f} | "
                 f"{r['analytic_ratio']:.3f} | {r['tokens_per_s']:.0f} | "
                 f"{r['speed_ratio']:.2f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments.matformer import matformer_eval  # pylint: disable=g-import-not-at-top
  from models import matformer as mf  # pylint: disable=g-import-not-at-top
  cfg = mf.MatFormerConfig(**SHAPES[_SHAPE.value])
  module = mf.MatFormerLM(cfg)
  params = matformer_eval.unbox(jax.jit(
      lambda k: module.init(k, jnp.zeros((1, 8), jnp.int32))["params"])(jax.random.PRNGKey(0)))
  rows = matformer_eval.granularity_benchmark(cfg, params, _BATCH.value, _SEQ.value,
                                              _REPEATS.value)
  print(f"MatFormer {_SHAPE.value}: {cfg.num_layers} layers, d_model {cfg.d_model}, "
        f"d_ff {cfg.d_ff}; forward of [{_BATCH.value}, {_SEQ.value}] tokens on "
        f"{jax.devices()[0].platform}")
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
