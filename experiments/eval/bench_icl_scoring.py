"""Benchmark: harness scoring throughput vs a plain per-example jitted loop.

  python -m experiments.eval.bench_icl_scoring --num_requests=256 --shots=2

Requests are the built-in ICL tasks' (context, continuation) pairs at k shots
(`tools/make_icl_tasks.py`, byte vocabulary), scored by a randomly
initialised model of the quickstart's shape (throughput does not depend on
the weights). Both methods run twice; the second (warm: every shape
compiled) pass is timed:
  harness  `icl_scoring.SpanScorer`: length-sorted, bucketed, padded batches,
           one jitted forward per batch;
  loop     `icl_scoring.per_request_reference`: one jitted forward per
           request on its unpadded row (a compilation per distinct length,
           paid in the untimed pass).
Prints requests/s of each, their ratio, and the largest score difference.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags

from data_pipelines import lm_data
from experiments.configs import lm_quickstart
from experiments.eval import icl_scoring
from experiments.eval import icl_tasks
from models import registry

_N = flags.DEFINE_integer("num_requests", 256, "Requests scored (from the task list, in order).")
_SHOTS = flags.DEFINE_integer("shots", 2, "Shots per prompt.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Harness rows per forward.")
_SHAPE = flags.DEFINE_enum("shape", "quickstart", ["quickstart", "tiny"], "Model shape.")
_DATA = flags.DEFINE_string("data_dir", "~/.cache/armillary/data", "Where the task files live.")


def requests(num: int, shots: int, data_dir: str) -> list[tuple[list[int], list[int]]]:
  from tools import make_icl_tasks  # pylint: disable=g-import-not-at-top
  path = make_icl_tasks.build_tasks(os.path.join(os.path.expanduser(data_dir), "icl_tasks"))
  vocab = lm_data.make_vocabulary("byte")
  enc = lambda t: [int(i) for i in vocab.encode(t)]
  out = []
  for spec in icl_tasks.load_task_list(path):
    examples = icl_tasks.read_examples(spec)
    for r in icl_tasks.build_requests(spec, examples, shots):
      out.append((enc(r.context)[-500:], enc(r.continuation)))
      if len(out) >= num:
        return out
  return out


def main(argv):
  del argv
  c = lm_quickstart.get_config()
  if _SHAPE.value == "tiny":
    c.model.update(dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                        d_ff=64))
  model = registry.build(c.model)
  z = np.zeros((1, 2), np.int32)
  params = model.init(jax.random.PRNGKey(0), {"inputs": z, "targets": z, "weights": z})
  pairs = requests(_N.value, _SHOTS.value, _DATA.value)
  lengths = [len(a) + len(b) + 1 for a, b in pairs]
  print(f"{len(pairs)} requests, row length mean {np.mean(lengths):.0f} max {max(lengths)}, "
        f"{len(set(lengths))} distinct; model {_SHAPE.value}; {jax.device_count()} device(s) "
        f"{jax.devices()[0].platform}; load average {os.getloadavg()[0]:.1f}")
  scorer = icl_scoring.SpanScorer(model.module, params, batch_size=_BATCH.value, bos_id=0)
  scorer.score(pairs)   # compile every bucket
  t0 = time.perf_counter()
  fast = scorer.score(pairs)
  t_fast = time.perf_counter() - t0
  icl_scoring.per_request_reference(model.module, params, pairs, bos_id=0)
  t0 = time.perf_counter()
  slow = icl_scoring.per_request_reference(model.module, params, pairs, bos_id=0)
  t_slow = time.perf_counter() - t0
  diff = float(np.max(np.abs(fast.logprob_sum - slow.logprob_sum)))
  print(f"harness: {len(pairs) / t_fast:8.1f} requests/s ({t_fast:.2f} s, "
        f"{scorer.forward_calls // 2} forwards per pass)")
  print(f"loop:    {len(pairs) / t_slow:8.1f} requests/s ({t_slow:.2f} s, {len(pairs)} forwards)")
  print(f"ratio harness/loop: {t_slow / t_fast:.2f}x; max |score difference| {diff:.2e}; "
        f"greedy matches agree: {bool(np.all(fast.greedy_match == slow.greedy_match))}")


if __name__ == "__main__":
  app.run(main)
