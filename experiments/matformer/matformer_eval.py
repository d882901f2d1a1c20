"""The study's measurements on trained models: held-out loss of any sub-model,
Mix'n'Match choices, consistency, and speculative decoding timings.

Held-out loss of a model M on validation batches B: sum_t w_t CE_t / sum_t w_t
(nats per byte token). Consistency of q with p: mean greedy agreement and mean
KL(p || q) over the same positions (`models.matformer.consistency_sums`).
Speculative decoding: acceptance = accepted / drafted tokens, speed-up =
wall time of target-only KV-cache decoding / wall time of speculative
decoding, same prompts and token count (medians over repeats after a warm-up
run that compiles).
"""
from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from framework import decoding
from framework import speculative
from models import matformer as mf

Batch = dict[str, np.ndarray]


@functools.lru_cache(maxsize=128)
def _loss_fn(module: nn.Module):
  return jax.jit(lambda params, batch: module.apply({"params": params}, batch, method="loss"))


def eval_loss(module: nn.Module, params: Any, batches: Sequence[Batch]) -> dict[str, float]:
  """Token-weighted mean loss and accuracy of `module` (its `loss` method)."""
  totals = {"loss": 0.0, "accuracy": 0.0, "tokens": 0.0}
  for batch in batches:
    sums = jax.device_get(_loss_fn(module)(params, batch))
    for key in totals:
      totals[key] += float(sums[key])
  n = max(totals["tokens"], 1.0)
  return {"loss": totals["loss"] / n, "accuracy": totals["accuracy"] / n,
          "tokens": totals["tokens"]}


@functools.lru_cache(maxsize=128)
def _consistency_fn(sub: nn.Module, ref: nn.Module):
  def fn(sub_params, ref_params, batch):
    q = sub.apply({"params": sub_params}, batch["inputs"])
    p = ref.apply({"params": ref_params}, batch["inputs"])
    return mf.consistency_sums(q, p, batch["weights"])
  return jax.jit(fn)


def consistency(sub: nn.Module, sub_params: Any, ref: nn.Module, ref_params: Any,
                batches: Sequence[Batch]) -> dict[str, float]:
  """Mean greedy agreement and KL(p || q), KL(q || p) of `sub` (q) against `ref` (p)."""
  totals: dict[str, float] = {}
  for batch in batches:
    sums = jax.device_get(_consistency_fn(sub, ref)(sub_params, ref_params, batch))
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  n = max(totals["tokens"], 1.0)
  return {"agreement": totals["agree"] / n, "kl": totals["kl"] / n,
          "kl_reverse": totals["kl_reverse"] / n}


def mixnmatch_choices(cfg: mf.MatFormerConfig, n: int, seed: int) -> list[tuple[int, ...]]:
  """The g uniform choices, then `n` distinct random non-uniform per-layer choices."""
  grans, layers = cfg.granularities, cfg.num_layers
  uniform = [(m,) * layers for m in grans]
  rng = np.random.default_rng(seed)
  total = len(grans) ** layers - len(grans)
  picked: list[tuple[int, ...]] = []
  while len(picked) < min(n, total):
    choice = tuple(int(grans[i]) for i in rng.integers(0, len(grans), layers))
    if len(set(choice)) > 1 and choice not in picked:
      picked.append(choice)
  return uniform + picked


def below_uniform_line(params: float, loss: float, uniform: Sequence[tuple[float, float]]
                       ) -> float:
  """loss minus the piecewise-linear interpolation of the uniform (params, loss)
  points at `params` (< 0: better than the line)."""
  xs, ys = zip(*sorted(uniform))
  return float(loss - np.interp(params, xs, ys))


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(statistics.median(times))


def speculative_run(target: nn.Module, target_params: Any, draft: nn.Module, draft_params: Any,
                    prompts: Sequence[Sequence[int]], *, new_tokens: int, gamma: int,
                    temperature: float, repeats: int, seed: int = 0) -> dict[str, Any]:
  """Acceptance, tokens per target call and wall-clock speed-up over target-only
  decoding; for greedy also whether the outputs are identical."""
  kwargs = dict(max_new_tokens=new_tokens, temperature=temperature, seed=seed)
  spec = lambda: speculative.speculative_generate(target, target_params, draft, draft_params,
                                                  prompts, gamma=gamma, **kwargs)
  plain = lambda: decoding.generate(target, target_params, prompts, **kwargs)
  result, reference = spec(), plain()          # compile both
  spec_s = _median_time(spec, repeats)
  plain_s = _median_time(plain, repeats)
  out = {"gamma": gamma, "temperature": temperature,
         "acceptance": result.acceptance_rate, "tokens_per_round": result.tokens_per_round,
         "rounds": result.rounds, "spec_s": spec_s, "target_s": plain_s,
         "speedup": plain_s / spec_s}
  if temperature == 0:
    out["identical"] = bool(np.array_equal(result.tokens, reference.tokens))
  return out


def forward_flops(module: nn.Module, params: Any, tokens: np.ndarray) -> float:
  """FLOPs of the compiled forward (XLA cost analysis)."""
  fn = jax.jit(lambda p, x: module.apply({"params": p}, x))
  analysis = fn.lower(params, tokens).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float(analysis["flops"])


def forward_tokens_per_s(module: nn.Module, params: Any, tokens: np.ndarray,
                         repeats: int) -> float:
  fn = jax.jit(lambda p, x: module.apply({"params": p}, x))
  jax.block_until_ready(fn(params, tokens))
  seconds = _median_time(lambda: jax.block_until_ready(fn(params, tokens)), repeats)
  return tokens.size / seconds


def granularity_benchmark(cfg: mf.MatFormerConfig, params: Any, batch: int, seq_len: int,
                          repeats: int, granularities: Sequence[Any] | None = None
                          ) -> list[dict[str, Any]]:
  """Per granularity: compiled forward FLOPs, the analytic 2 N_non-embedding-ish
  ratio, and forward tokens/s, each with its ratio to the universal model."""
  tokens = np.zeros((batch, seq_len), np.int32)
  grans = list(granularities or cfg.granularities)
  rows = []
  for m in grans:
    module = mf.MatFormerLM(cfg, granularity=m)
    rows.append({"granularity": m, "flops": forward_flops(module, params, tokens),
                 "analytic": mf.flops_per_token(cfg, seq_len, m),
                 "tokens_per_s": forward_tokens_per_s(module, params, tokens, repeats)})
  full = rows[-1]
  for row in rows:
    row["flops_ratio"] = row["flops"] / full["flops"]
    row["analytic_ratio"] = row["analytic"] / full["analytic"]
    row["speed_ratio"] = row["tokens_per_s"] / full["tokens_per_s"]
  return rows


def unbox(params: Any) -> Any:
  return jax.tree.map(jnp.asarray, nn.meta.unbox(params))
