r"""Decoding benchmark: KV-cache `generate` next to a plain recompute-the-prefix loop.

  python -m tools.bench_decode                 # quickstart and ~100M shapes, batch 1 and 16
  python -m tools.bench_decode --quick         # short prompts and generations, one round
      [--shapes=quickstart,100m] [--batches=1,16] [--prompt_len=32] [--new_tokens=16]
      [--rounds=3]

Both decode greedily from the same randomly initialised `TransformerLM` and
the same prompts (B rows of P random ids), N new tokens each:

  kv:     `framework.decoding.generate` (one prefill call writing the key/value
          cache, then a `lax.while_loop` of one-token steps over a static cache
          of S = bucket(P + N) slots). Prefill time = a call with N = 1 (prefill
          and one sample); decode time = (call with N) - (call with N = 1).
  plain:  what one writes without a cache: a `jax.jit` forward of the prompt
          [B, P] for the first token, then N - 1 jitted steps that each run the
          full forward over a static buffer [B, P + N] (the prefix plus not yet
          written slots, which causal attention ignores) and write the argmax at
          the next position. A static buffer avoids one compilation per length;
          it costs at most (P + N) / (P + N/2) times a growing prefix would.

The greedy tokens of the two must be equal (asserted). Figures:
  prefill tokens/s = B P / t_prefill,   decode tokens/s = B (N - 1) / t_decode,
and ratio = kv / plain. After untimed compile-and-warm-up calls, each round
times the kv pair (N = 1 then N, back to back) and the plain pair, in an order
alternating by round; calls under 0.2 s are repeated 5 times within a turn
(median). Medians over rounds are reported.

Shapes: `quickstart` is experiments/configs/lm_quickstart.py's model (~3M
parameters); `100m` is d_model 768, 12 layers, 12 heads (4 kv heads, head_dim
64), d_ff 2048, vocabulary 32000 (~100M parameters with tied embeddings). The
machine may be shared: the 1-minute load average is printed at start and end.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Dict, List, Sequence

from absl import app, flags
import numpy as np

SHAPES: Dict[str, Dict[str, Any]] = {
    # experiments/configs/lm_quickstart.py's model (tests check they agree)
    "quickstart": dict(vocab_size=384, d_model=256, num_layers=4, num_heads=8, num_kv_heads=2,
                       head_dim=32, d_ff=768),
    "100m": dict(vocab_size=32000, d_model=768, num_layers=12, num_heads=12, num_kv_heads=4,
                 head_dim=64, d_ff=2048),
    "tiny": dict(vocab_size=64, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                 head_dim=16, d_ff=64),   # for the unit test
}
LOAD_WARNING = 1.5


def build(shape: str, seed: int = 0):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from models import transformer as tr  # pylint: disable=g-import-not-at-top
  cfg = tr.TransformerConfig(**SHAPES[shape])
  module = tr.TransformerLM(cfg)
  params = jax.jit(lambda k: nn.meta.unbox(module.init(k, jnp.zeros((1, 8), jnp.int32))))(
      jax.random.PRNGKey(seed))["params"]
  return module, params, tr.count_params(cfg)["total"]


def plain_programs(module) -> tuple[Callable, Callable]:
  """(prefill(params, prompt [B, P]) -> first token [B],
      step(params, buf [B, W], pos) -> buf with argmax at pos written)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  @jax.jit
  def prefill(params, prompt):
    logits = module.apply({"params": params}, prompt)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

  @functools.partial(jax.jit, donate_argnums=1)
  def step(params, buf, pos):
    logits = module.apply({"params": params}, buf)
    last = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)
    nxt = jnp.argmax(last, axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice_in_dim(buf, nxt[:, None], pos, axis=1)

  return prefill, step


def bench_one(module, params, batch: int, prompt_len: int, new_tokens: int, rounds: int,
              seed: int = 0) -> Dict[str, Any]:
  """Times kv prefill / decode and plain prefill / decode; checks equal tokens."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from framework import decoding  # pylint: disable=g-import-not-at-top
  vocab = module.cfg.vocab_size
  rng = np.random.default_rng(seed)
  prompts = rng.integers(3, vocab, size=(batch, prompt_len)).astype(np.int32)
  lengths = np.full((batch,), prompt_len, np.int32)
  cache = decoding.bucket_length(prompt_len + new_tokens)
  width = prompt_len + new_tokens
  plain_prefill, plain_step = plain_programs(module)
  out: Dict[str, Any] = {}

  def kv(n):
    res = decoding.generate(module, params, (prompts, lengths), max_new_tokens=n,
                            cache_size=cache)
    return res.tokens

  def plain_first():
    return np.asarray(plain_prefill(params, prompts))

  def plain_rest(first):
    buf = np.zeros((batch, width), np.int32)
    buf[:, :prompt_len] = prompts
    buf[:, prompt_len] = first
    buf = jnp.asarray(buf)
    for i in range(1, new_tokens):
      buf = plain_step(params, buf, jnp.int32(prompt_len + i))
    return np.asarray(buf)[:, prompt_len:]

  first = plain_first()
  calls: Dict[str, Callable[[], Any]] = {
      "kv_prefill": lambda: kv(1),
      "kv_full": lambda: kv(new_tokens),
      "plain_prefill": plain_first,
      "plain_decode": lambda: plain_rest(first),
  }
  warm = {}
  results = {}
  for name, fn in calls.items():   # compile + warm up, untimed
    fn()
    start = time.perf_counter()
    results[name] = fn()
    warm[name] = time.perf_counter() - start
  kv_tokens, plain_tokens = results["kv_full"], results["plain_decode"]
  if not np.array_equal(kv_tokens, plain_tokens):
    b, i = map(int, np.argwhere(kv_tokens != plain_tokens)[0])
    raise AssertionError(f"greedy tokens differ (row {b}, step {i}: kv {kv_tokens[b, i]}, "
                         f"plain {plain_tokens[b, i]})")
  # Short calls are repeated within a turn (median), so that timer and dispatch
  # noise stays small next to them.
  inner = {name: 1 if t > 0.2 else 5 for name, t in warm.items()}

  def timed(name):
    values = []
    for _ in range(inner[name]):
      start = time.perf_counter()
      calls[name]()
      values.append(time.perf_counter() - start)
    return float(np.median(values))

  # The kv pair (N = 1, then N) runs back to back, so their difference sees
  # the same machine state; the kv and plain turns alternate, rotated by round.
  turns = {"kv": ("kv_prefill", "kv_full"), "plain": ("plain_prefill", "plain_decode")}
  times: Dict[str, List[float]] = {name: [] for name in calls}
  order = list(turns)
  for r in range(rounds):
    for turn in order[r % 2:] + order[:r % 2]:
      for name in turns[turn]:
        times[name].append(timed(name))
  med = {name: float(np.median(v)) for name, v in times.items()}
  kv_decode = max(float(np.median(np.subtract(times["kv_full"], times["kv_prefill"]))), 1e-9)
  out.update(
      batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, rounds=rounds,
      kv_prefill_tok_s=batch * prompt_len / med["kv_prefill"],
      plain_prefill_tok_s=batch * prompt_len / med["plain_prefill"],
      kv_decode_tok_s=batch * (new_tokens - 1) / kv_decode,
      plain_decode_tok_s=batch * (new_tokens - 1) / med["plain_decode"],
      tokens_equal=True, times_s=med)
  out["prefill_ratio"] = out["kv_prefill_tok_s"] / out["plain_prefill_tok_s"]
  out["decode_ratio"] = out["kv_decode_tok_s"] / out["plain_decode_tok_s"]
  return out


def run_benchmark(shapes: Sequence[str], batches: Sequence[int], prompt_len: int,
                  new_tokens: int, rounds: int,
                  log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
  rows = []
  for shape in shapes:
    module, params, n_params = build(shape)
    for batch in batches:
      row = bench_one(module, params, batch, prompt_len, new_tokens, rounds)
      row.update(shape=shape, params=n_params)
      rows.append(row)
      log(format_row(row))
  return rows


HEADER = ("| shape | params | batch | P | N | prefill kv tok/s | prefill plain tok/s | ratio "
          "| decode kv tok/s | decode plain tok/s | ratio |\n|---|---|---|---|---|---|---|---|"
          "---|---|---|")


def format_row(r: Dict[str, Any]) -> str:
  return (f"| {r['shape']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['prompt_len']} | "
          f"{r['new_tokens']} | {r['kv_prefill_tok_s']:.0f} | {r['plain_prefill_tok_s']:.0f} | "
          f"{r['prefill_ratio']:.2f} | {r['kv_decode_tok_s']:.1f} | "
          f"{r['plain_decode_tok_s']:.1f} | {r['decode_ratio']:.2f} |")


def _define_flags():
  """Flags exist only when this runs as a program, so importing it (tests) defines none."""
  global _SHAPES, _BATCHES, _PROMPT, _NEW, _ROUNDS, _QUICK
  _SHAPES = flags.DEFINE_list("shapes", ["quickstart", "100m"], "Model shapes to run.")
  _BATCHES = flags.DEFINE_list("batches", ["1", "16"], "Batch sizes.")
  _PROMPT = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row (P).")
  _NEW = flags.DEFINE_integer("new_tokens", 16, "New tokens per row (N).")
  _ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds (medians are reported).")
  _QUICK = flags.DEFINE_bool("quick", False, "Short run: P=16, N=8, one round.")


def _load() -> float:
  return os.getloadavg()[0]


def main(argv):
  del argv
  prompt_len, new_tokens, rounds = _PROMPT.value, _NEW.value, _ROUNDS.value
  if _QUICK.value:
    prompt_len, new_tokens, rounds = 16, 8, 1
  for s in _SHAPES.value:
    if s not in SHAPES:
      raise app.UsageError(f"--shapes: {s!r} is not one of {sorted(SHAPES)}")
  import jax  # pylint: disable=g-import-not-at-top
  start_load = _load()
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"load average {start_load:.2f} at start; P={prompt_len}, N={new_tokens}, "
        f"{rounds} round(s), greedy, float32")
  if start_load > LOAD_WARNING:
    print(f"WARNING: load average {start_load:.2f} > {LOAD_WARNING}: the machine is shared, "
          "absolute figures are noisy (ratios less so)")
  print(HEADER)
  t0 = time.perf_counter()
  run_benchmark(_SHAPES.value, [int(b) for b in _BATCHES.value], prompt_len, new_tokens,
                rounds)
  print(f"load average {_load():.2f} at end; {time.perf_counter() - t0:.0f} s; "
        "greedy tokens of kv and plain equal in every row")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
