"""Benchmark: CoLoR scoring throughput against the plain jitted forward.

  python -m experiments.color_filter.color_bench [--pool=runs/color_pool] \
      [--shape=tiny|quickstart] [--docs=512] [--batch_rows=32] [--rounds=3]

Both sides run the same model (random parameters: speed does not depend on
them) on the same documents, in the same process, interleaved round by round
(the order alternates), and the median round is reported:
  scorer  `color_scoring.Scorer.score_texts`: tokenize, cut into chunks, pack,
          forward + per-token loss on the mesh, per-document sums on the host;
  plain   `jax.jit(module.apply)` over the same packed rows, logits blocked on,
          nothing else (the floor the scorer's overhead is measured against).
Prints docs/s and tokens/s (document tokens, padding excluded) of each, and
the scorer / plain ratio. Documents come from a built pool's `pool` split
(--pool) or are generated (English-like words, lengths like the pool's).
"""
from __future__ import annotations

import os
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

from experiments.color_filter import color_scoring
from experiments.configs import color_filter as color_config
from experiments.configs import lm_quickstart
from models import registry

_POOL = flags.DEFINE_string("pool", "", "a built pool directory (default: generated documents)")
_SHAPE = flags.DEFINE_enum("shape", "tiny", ["tiny", "quickstart"],
                           "model: the color_filter:tiny LM or the quickstart LM")
_DOCS = flags.DEFINE_integer("docs", 512, "documents per round")
_BATCH_ROWS = flags.DEFINE_integer("batch_rows", 32, "packed rows per forward call")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "timed rounds per side")
_SEED = flags.DEFINE_integer("seed", 0, "generated documents and parameters")


def documents(pool: str, n: int, seed: int) -> list[str]:
  if pool:
    from data_pipelines.color_filter import pool_build  # pylint: disable=g-import-not-at-top
    rows = pool_build.read_split(pool, "pool")
    rng = np.random.default_rng(seed)
    return [rows[i]["text"] for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False)]
  rng = np.random.default_rng(seed)
  words = ("the of file process memory value return option data class module "
           "function pointer list user system error buffer time line").split()
  lengths = np.clip(rng.lognormal(np.log(450), 0.5, size=n), 50, 1500).astype(int)
  return [" ".join(rng.choice(words, size=max(int(L) // 6, 1))) for L in lengths]


def model_spec(shape: str) -> tuple[dict, int]:
  lm = color_config.get_config("tiny").lm if shape == "tiny" else lm_quickstart.get_config()
  return dict(lm.model), int(lm.data.seq_len)


def measure(*, texts, shape: str, batch_rows: int, rounds: int, seed: int,
            print_fn=print) -> dict:
  spec, seq_len = model_spec(shape)
  model = registry.build(spec)
  example = {k: np.zeros((batch_rows, seq_len), np.int32)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
  params = model.init(jax.random.PRNGKey(seed), example)
  scorer = color_scoring.Scorer(model, params, seq_len=seq_len, batch_rows=batch_rows)
  token_lists = [scorer.encode(t) for t in texts]
  packed = color_scoring.pack_chunks(
      [color_scoring.doc_chunks(t, seq_len) for t in token_lists], seq_len)
  doc_tokens = int(packed.lens.sum())
  rows = packed.inputs.shape[0]
  pad = (-rows) % batch_rows
  inputs = np.pad(packed.inputs, ((0, pad), (0, 0)))
  module = model.module
  plain_fn = jax.jit(lambda p, x: module.apply({"params": p}, x))
  placed = scorer.params

  def plain():
    out = None
    for b in range(0, inputs.shape[0], batch_rows):
      out = plain_fn(placed, inputs[b:b + batch_rows])
      out.block_until_ready()
    return out

  def scored():
    return scorer.score_texts(texts)

  scored()   # compile both
  plain()
  times = {"scorer": [], "plain": []}
  for r in range(rounds):
    order = ("scorer", "plain") if r % 2 == 0 else ("plain", "scorer")
    for side in order:
      t0 = time.perf_counter()
      (scored if side == "scorer" else plain)()
      times[side].append(time.perf_counter() - t0)
  result = {"docs": len(texts), "doc_tokens": doc_tokens, "rows": rows,
            "fill": doc_tokens / (rows * seq_len), "shape": shape, "seq_len": seq_len,
            "batch_rows": batch_rows, "devices": int(scorer.mesh.devices.size)}
  for side, ts in times.items():
    med = statistics.median(ts)
    result[side] = {"seconds": med, "min": min(ts), "max": max(ts),
                    "docs_per_s": len(texts) / med, "tokens_per_s": doc_tokens / med}
  result["ratio"] = result["scorer"]["tokens_per_s"] / result["plain"]["tokens_per_s"]
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print_fn(f"scoring benchmark: {shape} LM, {len(texts)} docs, {doc_tokens} tokens in {rows} "
           f"packed rows of {seq_len} ({result['fill']:.1%} filled), batch {batch_rows}, "
           f"{result['devices']} device(s), median of {rounds} rounds, load average {load:.1f}")
  for side in ("scorer", "plain"):
    s = result[side]
    print_fn(f"  {side:7s} {s['docs_per_s']:9.1f} docs/s {s['tokens_per_s']:11.0f} tokens/s   "
             f"({s['seconds']:.2f} s, min {s['min']:.2f}, max {s['max']:.2f})")
  print_fn(f"  scorer / plain forward: {result['ratio']:.2f}")
  return result


def main(argv):
  del argv
  texts = documents(_POOL.value, _DOCS.value, _SEED.value)
  measure(texts=texts, shape=_SHAPE.value, batch_rows=_BATCH_ROWS.value, rounds=_ROUNDS.value,
          seed=_SEED.value)


if __name__ == "__main__":
  app.run(main)
