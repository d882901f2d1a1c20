"""Runner: how Kronecker-factored is each layer's curvature during training?

Laptop-scale reproduction of Morwani, Shapira, Vyas, Malach, Kakade, Janson
(2024), "A New Perspective on Shampoo's Preconditioner", Figure 1 and the
practical-shortcut experiments. `run(config, workdir) -> dict` trains a model
(MLP or small CNN on sklearn's 8x8 digits, or a byte-level transformer LM on
the pydoc corpus) with Adam and, at `study.measure_steps`, measures for every
tapped weight W (m x n), with the metrics of `tools.kronecker_study`:

  gn       H = Fisher / Gauss-Newton from per-example gradients of
           study.num_examples inputs with labels sampled from the model
           (study.gn_labels="sampled", one label per input) or with every
           label y weighted by p(y|x) ("exact": the expectation over labels
           in closed form, for classifiers; groups of C samples). Inputs are
           drawn uniformly from the training data or (gn_inputs=
           "fisher_trace", finite training sets) importance-sampled with
           probability ~ 1 - |p(.|x)|^2 and weights 1/(N q_x), which keeps H
           unbiased and its estimate well conditioned late in training. In-sample
           cosines of optimal / pi<k> / shampoo2 / shampoo / kfac to H_S,
           sigma_2/sigma_1 of R(H_S), and held-out cosines (factors from one
           half of the samples, H from the other half with the unbiased
           |H|^2), which remove the in-sample optimism;
  adagrad  H = sum_t g_t g_t^T over the training mini-batch gradients so far
           (every `study.adagrad_every`-th step is stored); in-sample cosines
           (this H is a fixed matrix, not an estimate);
  shortcut factors from study.num_batch_grads mini-batch gradients of batch
           size B (study.batch_sizes), labels sampled from the model ("true"
           Fisher) or the real labels ("empirical" Fisher), inputs drawn
           uniformly as in training, against the gn reference H (unbiased
           |H|^2).

Writes metrics.jsonl (MetricWriter; keys gn/<layer>/<metric>,
adagrad/<layer>/<metric>, shortcut/<layer>/<labels>/b<B>/<metric>),
kronecker_metrics.json (everything, nested), figure1.png (cosine vs step,
one line per approximation, columns GN | Adagrad, one row per layer),
shortcuts.png (final step, cosine vs batch size) and report.md.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import optax

from framework.metrics import MetricWriter
from framework.progress import Progress
from models import transformer
from models.cnn import SmallCNN
from models.mlp import MLP
from tools import kronecker_study as ks

APPROX_ORDER = ("optimal", "pi5", "pi2", "shampoo2", "shampoo", "kfac")
APPROX_LABELS = {"optimal": "optimal Kronecker", "pi5": "power iter. k=5",
                 "pi2": "power iter. k=2", "shampoo2": "Shampoo$^2$ (L⊗R, k=1)",
                 "shampoo": "Shampoo (L$^{1/2}$⊗R$^{1/2}$)", "kfac": "K-FAC"}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.kronecker_study"
  c.model = "mlp"  # "mlp" | "cnn" | "lm"
  c.seed = 0
  c.mlp = ml_collections.ConfigDict(dict(hidden_sizes=(64, 64), activation="relu"))
  c.cnn = ml_collections.ConfigDict(dict(channels=(16, 32), hidden_sizes=(64,)))
  c.lm = ml_collections.ConfigDict(dict(
      vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
      head_dim=8, d_ff=128, seq_len=32))
  c.train = ml_collections.ConfigDict(dict(steps=2000, batch_size=32, lr=3e-3))
  c.study = ml_collections.ConfigDict(dict(
      measure_steps=(0, 50, 200, 500, 1000, 2000),
      num_examples=1024,         # inputs for the GN view (two halves for held out)
      gn_labels="sampled",       # "sampled": one y ~ p(.|x) per input; "exact": all y, weight p
      gn_inputs="uniform",       # "uniform" | "fisher_trace" (importance sampling, see below)
      gn_uniform_mix=0.2,        # share of uniform in the importance distribution
      chunk=256,                 # examples per jitted per-example call
      layers=(),                 # substrings to select layers; () = all tapped
      pi_steps=(2, 5),
      tol=1e-7, max_iters=500,   # power iteration to convergence
      svd=True,                  # sigma_2 / sigma_1 of R(H) by ARPACK
      heldout=True,
      adagrad_every=1,           # store every k-th training gradient
      batch_sizes=(1, 4, 16, 64, 256),
      num_batch_grads=256,
      max_batch_examples=8192,   # examples per jitted batch-gradient call
      shortcut_steps=(),         # () = every measure step
      dense_check_max=1024,      # dense H cross-check when m * n <= this
  ))
  return c


# ----------------------------------------------------------------------------
# Data and models.
# ----------------------------------------------------------------------------


class Data:
  """sample(rng, n) -> (x, y) training examples drawn i.i.d. (with replacement).

  train: the finite training set (x, y) when there is one (digits), else None.
  """

  def __init__(self, sample: Callable[[np.random.Generator, int], Tuple[np.ndarray, np.ndarray]],
               evaluate_arrays: Tuple[np.ndarray, np.ndarray], example: np.ndarray,
               train: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    self.sample = sample
    self.eval_x, self.eval_y = evaluate_arrays
    self.example = example
    self.train = train


def digits_data(seed: int, image: bool) -> Data:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = (d.data / 16.0).astype(np.float32)
  if image:
    x = x.reshape(-1, 8, 8, 1)
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(y))
  n_train = int(0.8 * len(y))
  tr, te = perm[:n_train], perm[n_train:]
  xtr, ytr = x[tr], y[tr]

  def sample(rng, n):
    idx = rng.integers(0, len(ytr), size=n)
    return xtr[idx], ytr[idx]
  return Data(sample, (x[te], y[te]), x[0], train=(xtr, ytr))


def pydoc_bytes() -> Tuple[np.ndarray, np.ndarray]:
  from data_pipelines import corpus  # pylint: disable=g-import-not-at-top
  docs = corpus.pydoc_documents()
  enc = lambda split: np.frombuffer("\n\n".join(d["text"] for d in docs[split]).encode("utf-8"),
                                    np.uint8)
  return enc("train"), enc("validation")


def lm_data(seq_len: int, seed: int, num_eval: int = 256) -> Data:
  train, val = pydoc_bytes()

  def windows(stream, starts):
    idx = starts[:, None] + np.arange(seq_len + 1)[None]
    w = stream[idx].astype(np.int32)
    return w[:, :-1], w[:, 1:]

  def sample(rng, n):
    return windows(train, rng.integers(0, len(train) - seq_len - 1, size=n))
  ev = windows(val, np.random.default_rng(seed + 1).integers(0, len(val) - seq_len - 1,
                                                             size=num_eval))
  return Data(sample, ev, np.zeros(seq_len, np.int32))


def build(config) -> Tuple[nn.Module, Data]:
  if config.model == "mlp":
    return (MLP(hidden_sizes=tuple(config.mlp.hidden_sizes), num_outputs=10,
                activation=config.mlp.activation), digits_data(config.seed, image=False))
  if config.model == "cnn":
    return (SmallCNN(channels=tuple(config.cnn.channels),
                     hidden_sizes=tuple(config.cnn.hidden_sizes), num_outputs=10),
            digits_data(config.seed, image=True))
  if config.model == "lm":
    lc = config.lm
    cfg = transformer.TransformerConfig(
        vocab_size=lc.vocab_size, d_model=lc.d_model, num_layers=lc.num_layers,
        num_heads=lc.num_heads, num_kv_heads=lc.num_kv_heads, head_dim=lc.head_dim,
        d_ff=lc.d_ff, max_len=lc.seq_len)
    return transformer.TransformerLM(cfg), lm_data(lc.seq_len, config.seed)
  raise ValueError(f"config.model={config.model!r} must be 'mlp', 'cnn' or 'lm'")


def _mean_xent(module, params, x, y):
  logits = module.apply({"params": params}, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), logits


# ----------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _predict(module, params, x):
  return jax.nn.softmax(module.apply({"params": params}, x))


def importance_sample(module, params, data: Data, rng: np.random.Generator, n: int,
                      uniform_mix: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """n training inputs drawn with probability q_x, and weights 1 / (N q_x).

  q = (1 - mix) t / sum(t) + mix / N with t_x = 1 - |p(.|x)|^2, the trace of
  the output-layer curvature diag(p) - p p^T of input x. Any q > 0 keeps
  (1/n) sum_i w_i H_{x_i} unbiased for the training-set mean (1/N) sum_x H_x;
  this one puts the samples where the Fisher is (late in training it is
  carried by the few inputs the model is unsure of, and uniform sampling
  leaves H_S dominated by its own noise).
  """
  if data.train is None:
    raise ValueError("study.gn_inputs='fisher_trace' needs a finite training set")
  tx, ty = data.train
  probs = np.asarray(_predict(module, params, tx), np.float64)
  t = 1.0 - np.sum(probs.reshape(len(tx), -1) ** 2, axis=-1)
  q = (1.0 - uniform_mix) * t / max(t.sum(), 1e-300) + uniform_mix / len(tx)
  q /= q.sum()
  idx = rng.choice(len(tx), size=n, p=q)
  return tx[idx], ty[idx], (1.0 / (len(tx) * q[idx])).astype(np.float32)


def _chunked_per_example(module, layers, params, probes0, xs, ys, keys, weights, sampled,
                         chunk):
  gs, facs = [], []
  keys = np.asarray(keys)
  for s in range(0, len(xs), chunk):
    w = None if weights is None else np.asarray(weights[s:s + chunk], np.float32)
    g, f = ks.per_example_grads(module, layers, params, probes0, xs[s:s + chunk],
                                ys[s:s + chunk], keys[s:s + chunk], sampled, w)
    gs.append(jax.device_get(g))
    facs.append(jax.device_get(f))
  g = {k: np.concatenate([c[k] for c in gs]) for k in gs[0]}
  f = jax.tree.map(lambda *a: np.sum(np.stack(a), axis=0), *facs)
  return g, f


def _chunked_batch_grads(module, layers, params, xs, ys, keys, sampled, max_examples):
  nb, b = xs.shape[:2]
  per = max(1, max_examples // b)
  out = []
  keys = np.asarray(keys)
  for s in range(0, nb, per):
    out.append(jax.device_get(ks.batch_grads(module, layers, params, xs[s:s + per],
                                             ys[s:s + per], keys[s:s + per], sampled)))
  return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def measure(config, module, layers, probes0, params, data: Data, rng: np.random.Generator,
            key: jax.Array, ada: Dict[str, np.ndarray], ada_count: int, step: int
            ) -> Dict[str, Any]:
  """All metrics at one training step: {"gn": {layer: {...}}, "adagrad": ..., "shortcut": ...}."""
  sc = config.study
  opts = dict(pi_steps=tuple(sc.pi_steps), tol=float(sc.tol), max_iters=int(sc.max_iters))
  out: Dict[str, Any] = {"gn": {}, "adagrad": {}, "shortcut": {}, "dense_check": {}}
  n_ex = int(sc.num_examples)
  half = n_ex // 2
  k_gn, k_sc = jax.random.split(key)
  weights, group = None, 1
  if sc.gn_inputs == "uniform":
    xs, ys = data.sample(rng, n_ex)
  elif sc.gn_inputs == "fisher_trace":
    xs, ys, weights = importance_sample(module, params, data, rng, n_ex, float(sc.gn_uniform_mix))
  else:
    raise ValueError(f"study.gn_inputs={sc.gn_inputs!r} must be 'uniform' or 'fisher_trace'")
  if sc.gn_labels == "exact":
    # All labels of every input, weighted by p(y | x): the exact Fisher of
    # these inputs (no label-sampling noise); one group per input.
    probs = np.asarray(_predict(module, params, xs), np.float32)
    if probs.ndim != 2:
      raise ValueError("study.gn_labels='exact' needs one label per example (a classifier)")
    group = probs.shape[1]
    xs = np.repeat(xs, group, axis=0)
    ys = np.tile(np.arange(group, dtype=np.int32), n_ex)
    weights = probs.reshape(-1) * (1.0 if weights is None else np.repeat(weights, group))
  elif sc.gn_labels != "sampled":
    raise ValueError(f"study.gn_labels={sc.gn_labels!r} must be 'sampled' or 'exact'")
  keys = jax.random.split(k_gn, len(xs))
  cut = half * group
  per_ex = lambda sl: _chunked_per_example(
      module, layers, params, probes0, xs[sl], ys[sl], keys[sl],
      None if weights is None else weights[sl], sc.gn_labels == "sampled", int(sc.chunk))
  g1, f1 = per_ex(slice(0, cut))
  g2, f2 = per_ex(slice(cut, None))
  ref = {}
  for l in layers:
    g = np.concatenate([g1[l.name], g2[l.name]])
    fac = tuple(a + b for a, b in zip(f1[l.name], f2[l.name]))
    ref[l.name] = ks.analyze(g, fac, group=group, **opts)
    met = ks.layer_metrics(ref[l.name], svd=bool(sc.svd))
    if sc.heldout:
      met.update(ks.heldout_metrics(ks.analyze(g1[l.name], f1[l.name], group=group, **opts),
                                    ks.analyze(g2[l.name], None, group=group, **opts)))
    out["gn"][l.name] = met
    if l.m * l.n <= int(sc.dense_check_max):
      out["dense_check"][l.name] = ks.dense_check(g, ref[l.name])
    if ada_count >= 2:
      # Zero-padding the stored gradients to a power-of-two count only
      # rescales H (and L, R, A, B), which no metric here sees; it bounds the
      # number of compiled shapes.
      bucket = min(len(ada[l.name]), 1 << (ada_count - 1).bit_length())
      out["adagrad"][l.name] = ks.layer_metrics(ks.analyze(ada[l.name][:bucket], **opts),
                                                svd=bool(sc.svd))
  shortcut_steps = tuple(sc.shortcut_steps) or tuple(sc.measure_steps)
  if step in shortcut_steps and len(sc.batch_sizes):
    nb = int(sc.num_batch_grads)
    for labels in ("sampled", "real"):
      for b in sc.batch_sizes:
        b = int(b)
        bx, by = data.sample(rng, nb * b)
        bx = bx.reshape((nb, b) + bx.shape[1:])
        by = by.reshape((nb, b) + by.shape[1:])
        k_sc, sub = jax.random.split(k_sc)
        bkeys = jax.random.split(sub, (nb, b))
        est = _chunked_batch_grads(module, layers, params, bx, by, bkeys, labels == "sampled",
                                   int(sc.max_batch_examples))
        for l in layers:
          met = ks.shortcut_metrics(ref[l.name], ks.analyze(est[l.name], **opts), b)
          out["shortcut"].setdefault(l.name, {}).setdefault(labels, {})[b] = met
  return out


def _flatten(step_result: Dict[str, Any]) -> Dict[str, float]:
  flat = {}
  for view in ("gn", "adagrad"):
    for layer, met in step_result[view].items():
      for k, v in met.items():
        flat[f"{view}/{layer}/{k}"] = v
  for layer, by_label in step_result["shortcut"].items():
    for labels, by_b in by_label.items():
      for b, met in by_b.items():
        for k, v in met.items():
          flat[f"shortcut/{layer}/{labels}/b{b}/{k}"] = v
  for layer, v in step_result["dense_check"].items():
    flat[f"dense_check/{layer}/max_abs_diff"] = v
  return flat


# ----------------------------------------------------------------------------
# Plots and report.
# ----------------------------------------------------------------------------


def plot_figure1(results: Dict[int, Dict[str, Any]], layers, path: str) -> None:
  steps = sorted(results)
  views = (("gn", "Gauss-Newton (Fisher, labels from the model)"),
           ("adagrad", "Adagrad (sum g g$^T$)"))
  fig, axes = plt.subplots(len(layers), 2, figsize=(10, 2.6 * len(layers)), squeeze=False,
                           sharex=True)
  for i, l in enumerate(layers):
    for j, (view, title) in enumerate(views):
      ax = axes[i, j]
      for name in APPROX_ORDER:
        pts = [(t, results[t][view][l.name][f"{name}/cos"]) for t in steps
               if l.name in results[t][view] and f"{name}/cos" in results[t][view][l.name]]
        if pts:
          style = "--" if name.startswith("pi") else "-"
          ax.plot(*zip(*pts), style, marker="o", ms=3, label=APPROX_LABELS[name])
      for name, color in (("optimal", "C0"), ("shampoo2", "C3")):
        pts = [(t, results[t][view][l.name][f"{name}/cos_heldout"]) for t in steps
               if f"{name}/cos_heldout" in results[t][view].get(l.name, {})]
        if pts:
          ax.plot(*zip(*pts), ":", color=color, marker="x", ms=3,
                  label=f"{APPROX_LABELS[name]}, held out")
      ax.set_title(f"{l.name} ({l.m}x{l.n}) — {title}", fontsize=8)
      ax.set_ylabel("cosine sim. to H")
      ax.grid(alpha=0.3)
      if i == len(layers) - 1:
        ax.set_xlabel("training step")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (2.6 * len(layers))))
  fig.savefig(path, dpi=80)
  plt.close(fig)


def plot_shortcuts(shortcut: Dict[str, Any], layers, path: str, step: int) -> None:
  ncol = min(4, len(layers))
  nrow = -(-len(layers) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
  for i, l in enumerate(layers):
    ax = axes[i // ncol, i % ncol]
    for labels, color in (("sampled", "C0"), ("real", "C3")):
      by_b = shortcut.get(l.name, {}).get(labels, {})
      if not by_b:
        continue
      bs = sorted(by_b)
      ax.plot(bs, [by_b[b]["shampoo2/cos"] for b in bs], "-o", color=color, ms=3,
              label=f"Shampoo$^2$, {labels} labels")
      ax.plot(bs, [by_b[b]["optimal/cos"] for b in bs], ":s", color=color, ms=3,
              label=f"optimal, {labels} labels")
    ax.set_xscale("log", base=2)
    ax.set_title(f"{l.name}", fontsize=8)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("cosine to per-example H$_{GN}$")
    ax.grid(alpha=0.3)
  for j in range(len(layers), nrow * ncol):
    axes[j // ncol, j % ncol].axis("off")
  axes[0, 0].legend(fontsize=6)
  fig.suptitle(f"Factors from mini-batch gradients vs the GN reference H (step {step})",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _f(v, fmt="{:.3f}") -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "–"
  return fmt.format(v)


def write_report(path: str, config, results, layers, timings, train_log) -> Dict[str, Any]:
  final = max(results)
  res = results[final]
  lines = [f"# Kronecker structure of the curvature — {config.model}\n",
           "Reproduction (laptop scale) of Morwani et al. 2024, *A New Perspective on "
           "Shampoo's Preconditioner*: cosine similarity <H, H~>/(|H||H~|) between each "
           "layer's H and Kronecker approximations H~ = A⊗B. `figure1.png`: cosine vs "
           "training step (paper's Figure 1 layout; dotted: GN held out, see below); "
           "`shortcuts.png`: factors from mini-batch "
           "gradients. Best-scale relative Frobenius error = sqrt(1 - cos²) (in "
           "metrics.jsonl as `*/err`).\n",
           f"Model `{config.model}`, {config.train.steps} Adam steps (batch "
           f"{config.train.batch_size}, lr {config.train.lr}); final "
           f"eval loss {train_log[-1][1]:.3f}, accuracy {train_log[-1][2]:.3f}; GN view from "
           f"{config.study.num_examples} inputs, labels `{config.study.gn_labels}` ("
           + ("all labels weighted by p(y|x): the exact Fisher of those inputs"
              if config.study.gn_labels == "exact" else "one label y ~ p(.|x) per input")
           + f"); Adagrad view from every "
           f"{config.study.adagrad_every}-th training gradient. Runtime "
           f"{timings['total_s']:.0f} s (train {timings['train_s']:.0f} s, measure "
           f"{timings['measure_s']:.0f} s), load average at end {timings['load']}.\n",
           f"## Final step {final}: in-sample cosine to H\n",
           "pi<k>: k steps of the two-sided power iteration from identities (k=1 is "
           "Shampoo²); optimal: run to convergence (iterations in `iters`); "
           "σ₂/σ₁ of the Van Loan rearrangement sets its rate; `cos_svd` = σ₁/|H|, the "
           "best possible cosine (ARPACK check of the power iteration); `diag` = share of "
           "|H_S|² from pairs of samples of the same input (near 1: the sample H is mostly "
           "sampling noise).\n",
           "| layer | view | optimal | k=5 | k=2 | Shampoo² | Shampoo | K-FAC | cos_svd | "
           "σ₂/σ₁ | iters | diag |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for l in layers:
    for view in ("gn", "adagrad"):
      m = res[view].get(l.name)
      if not m:
        continue
      lines.append(
          f"| {l.name} ({l.m}×{l.n}) | {view} | " + " | ".join(
              _f(m.get(f"{a}/cos")) for a in APPROX_ORDER) +
          f" | {_f(m.get('optimal/cos_svd'))} | {_f(m.get('sigma_ratio'))} | "
          f"{m.get('optimal_iters')} | {_f(m.get('diag_frac'), '{:.2f}')} |")
  lines += ["", f"## Final step {final}: relative Frobenius error |H − s·A⊗B| / |H|\n",
            "At the best scale s (= sqrt(1 − cos²)), and for Shampoo² also at the scale "
            "1/tr(H) implied by tr(L) = tr(R) = tr(H) (`Sh² natural`).\n",
            "| layer | view | optimal | Shampoo² | Sh² natural | Shampoo | K-FAC |",
            "|---|---|---|---|---|---|---|"]
  for l in layers:
    for view in ("gn", "adagrad"):
      m = res[view].get(l.name)
      if m:
        lines.append(f"| {l.name} | {view} | " + " | ".join(_f(m.get(k)) for k in (
            "optimal/err", "shampoo2/err", "shampoo2/err_natural", "shampoo/err",
            "kfac/err")) + " |")
  if any("optimal/cos_heldout" in m for m in res["gn"].values()):
    lines += ["", "## Final step: GN view held out\n",
              "Factors from half of the per-example gradients, H from the other half with "
              "the unbiased |H|² (U-statistic over pairs of different inputs): estimates the "
              "cosine to the population GN matrix without in-sample optimism. It is a ratio "
              "of noisy estimates (it can exceed 1; its noise grows with `diag`): compare "
              "approximations within a row.\n",
              "| layer | optimal | k=5 | k=2 | Shampoo² | Shampoo | K-FAC |",
              "|---|---|---|---|---|---|---|"]
    for l in layers:
      m = res["gn"][l.name]
      lines.append(f"| {l.name} | " + " | ".join(
          _f(m.get(f"{a}/cos_heldout")) for a in APPROX_ORDER) + " |")
  sc_steps = [t for t in sorted(results) if results[t]["shortcut"]]
  if sc_steps:
    t = sc_steps[-1]
    sc = results[t]["shortcut"]
    bs = sorted(next(iter(next(iter(sc.values())).values())))
    lines += ["", f"## Shortcuts at step {t}: factors from mini-batch gradients\n",
              f"{config.study.num_batch_grads} mini-batch gradients per setting; cosine of "
              "L_B⊗R_B (Shampoo²) and of the optimal factors of the batch-gradient H "
              "against the GN reference H (the per-example gradients above, unbiased |H|²). "
              "B=1 with sampled labels is the per-example baseline (uniform inputs, as in "
              "training); `real` = empirical Fisher. trace ratio = "
              "B·tr(L_B)/tr(L): 1 in expectation for sampled labels (E[G_B G_Bᵀ] = L/B).\n",
              "| layer | labels | " + " | ".join(f"Sh² B={b}" for b in bs) + " | " +
              " | ".join(f"opt B={b}" for b in bs) + f" | trace ratio B={bs[-1]} |",
              "|---|---|" + "---|" * (2 * len(bs) + 1)]
    for l in layers:
      for labels in ("sampled", "real"):
        by_b = sc[l.name][labels]
        lines.append(f"| {l.name} | {labels} | " +
                     " | ".join(_f(by_b[b]["shampoo2/cos"]) for b in bs) + " | " +
                     " | ".join(_f(by_b[b]["optimal/cos"]) for b in bs) +
                     f" | {_f(by_b[bs[-1]]['trace_ratio'], '{:.2f}')} |")
  # Averages over layers (plain means; numbers above are the data).
  summary: Dict[str, Any] = {"final_step": final}
  lines += ["", "## Averages over layers (final step)\n"]
  for view in ("gn", "adagrad"):
    ms = [res[view][l.name] for l in layers if l.name in res[view]]
    if not ms:
      continue
    avg = {a: float(np.mean([m[f"{a}/cos"] for m in ms if f"{a}/cos" in m]))
           for a in APPROX_ORDER if any(f"{a}/cos" in m for m in ms)}
    for a, v in avg.items():
      summary[f"{view}/mean_cos/{a}"] = v
    lines.append(f"- {view}: mean cosine " + ", ".join(f"{a} {v:.3f}" for a, v in avg.items())
                 + f"; optimal − Shampoo² = {avg['optimal'] - avg['shampoo2']:.3f}, "
                 f"optimal − classic Shampoo = {avg['optimal'] - avg['shampoo']:.3f}; "
                 f"Shampoo² beats classic Shampoo on "
                 f"{sum(m['shampoo2/cos'] > m['shampoo/cos'] for m in ms)}/{len(ms)} layers.")
    if view == "gn" and "optimal/cos_heldout" in ms[0]:
      for a in ("optimal", "shampoo2", "shampoo", "kfac"):
        summary[f"gn/mean_cos_heldout/{a}"] = float(np.mean([m[f"{a}/cos_heldout"] for m in ms]))
      lines.append("- gn held out: mean cosine " + ", ".join(
          f"{a} {summary[f'gn/mean_cos_heldout/{a}']:.3f}"
          for a in ("optimal", "shampoo2", "shampoo", "kfac")) + ".")
  if sc_steps:
    for labels in ("sampled", "real"):
      for b in (bs[0], bs[-1]):
        v = float(np.mean([sc[l.name][labels][b]["shampoo2/cos"] for l in layers]))
        summary[f"shortcut/mean_shampoo2_cos/{labels}/b{b}"] = v
    lines.append(
        f"- shortcuts: mean Shampoo² cosine to H_GN, sampled labels B={bs[0]} "
        f"{summary[f'shortcut/mean_shampoo2_cos/sampled/b{bs[0]}']:.3f} -> B={bs[-1]} "
        f"{summary[f'shortcut/mean_shampoo2_cos/sampled/b{bs[-1]}']:.3f}; real labels "
        f"B={bs[0]} {summary[f'shortcut/mean_shampoo2_cos/real/b{bs[0]}']:.3f} -> B={bs[-1]} "
        f"{summary[f'shortcut/mean_shampoo2_cos/real/b{bs[-1]}']:.3f}.")
  dc = [v for t in results for v in results[t]["dense_check"].values()]
  if dc:
    summary["dense_check_max_abs_diff"] = float(max(dc))
    lines.append(f"- implicit vs dense H (layers with m·n ≤ {config.study.dense_check_max}): "
                 f"max |difference| of cosines and σ₂/σ₁ = {max(dc):.2e}.")
  lines += ["", "## Training (held-out data)\n", "| step | eval loss | eval accuracy |",
            "|---|---|---|"]
  lines += [f"| {t} | {lo:.3f} | {acc:.3f} |" for t, lo, acc in train_log]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return summary


# ----------------------------------------------------------------------------
# Run.
# ----------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  t_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  module, data = build(config)
  sc = config.study
  rng = np.random.default_rng(config.seed)  # training batches
  # Measurement draws use their own streams, so that the study settings do
  # not change the training trajectory.
  measure_rng = np.random.default_rng(config.seed + 1)
  key = jax.random.PRNGKey(config.seed)
  measure_key = jax.random.PRNGKey(config.seed + 1)
  key, k_init = jax.random.split(key)
  example = jnp.asarray(data.example)[None]
  params = nn.meta.unbox(jax.jit(module.init)(k_init, example)["params"])
  layers, probe_shapes = ks.discover_layers(module, params, example,
                                            include=tuple(sc.layers) or None)
  probes0 = ks.zero_probes(probe_shapes)

  tx = optax.adam(config.train.lr)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    (loss, _), grads = jax.value_and_grad(
        lambda p: _mean_xent(module, p, x, y), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    mats = {l.name: ks.get_path(grads, l.path).reshape(l.m, l.n) for l in layers}
    return optax.apply_updates(params, updates), opt_state, loss, mats

  @jax.jit
  def evaluate(params, x, y):
    loss, logits = _mean_xent(module, params, x, y)
    return loss, jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))

  steps = int(config.train.steps)
  every = int(sc.adagrad_every)
  cap = steps // every + 1
  ada = {l.name: np.zeros((cap, l.m, l.n), np.float32) for l in layers}
  ada_count = 0
  measure_steps = sorted({int(t) for t in sc.measure_steps if 0 <= int(t) <= steps})
  writer = MetricWriter(workdir)
  progress = Progress(steps, desc=f"kron-{config.model}")
  results: Dict[int, Dict[str, Any]] = {}
  train_log: List[Tuple[int, float, float]] = []
  t_measure = 0.0
  loss = float("nan")
  for step in range(steps + 1):
    if step in measure_steps:
      t0 = time.perf_counter()
      measure_key, sub = jax.random.split(measure_key)
      results[step] = measure(config, module, layers, probes0, params, data, measure_rng, sub,
                              ada, ada_count, step)
      ev_loss, ev_acc = evaluate(params, jnp.asarray(data.eval_x), jnp.asarray(data.eval_y))
      dt = time.perf_counter() - t0
      t_measure += dt
      flat = _flatten(results[step])
      flat.update({"eval/loss": float(ev_loss), "eval/accuracy": float(ev_acc),
                   "time/measure_s": dt})
      writer.write(step, flat)
      train_log.append((step, float(ev_loss), float(ev_acc)))
    if step == steps:
      break
    x, y = data.sample(rng, int(config.train.batch_size))
    params, opt_state, loss, mats = train_step(params, opt_state, jnp.asarray(x), jnp.asarray(y))
    if step % every == 0:
      for l in layers:
        ada[l.name][ada_count] = np.asarray(mats[l.name])
      ada_count += 1
    if step % 50 == 0:
      writer.write(step, {"train/loss": float(loss)})
    progress.update(1, loss=float(loss))
  writer.close()
  total = time.perf_counter() - t_start
  timings = {"total_s": total, "measure_s": t_measure, "train_s": total - t_measure,
             "load": " ".join(f"{v:.2f}" for v in os.getloadavg())}

  with open(os.path.join(workdir, "kronecker_metrics.json"), "w") as f:
    json.dump({"layers": [dict(l._asdict()) for l in layers], "timings": timings,
               "train_log": train_log,
               "results": {str(t): r for t, r in results.items()}}, f, indent=1,
              default=lambda o: o if not isinstance(o, (np.generic,)) else o.item())
  return write_outputs(workdir, config, results, layers, timings, train_log)


def write_outputs(workdir: str, config, results, layers, timings, train_log) -> Dict[str, Any]:
  """Plots, report.md and summary.json from the measured results."""
  plot_figure1(results, layers, os.path.join(workdir, "figure1.png"))
  sc_steps = [t for t in sorted(results) if results[t]["shortcut"]]
  if sc_steps:
    plot_shortcuts(results[sc_steps[-1]]["shortcut"], layers,
                   os.path.join(workdir, "shortcuts.png"), sc_steps[-1])
  summary = write_report(os.path.join(workdir, "report.md"), config, results, layers,
                         timings, train_log)
  summary.update({"runtime_s": timings["total_s"], "measure_s": timings["measure_s"],
                  "final_eval_loss": train_log[-1][1], "final_eval_accuracy": train_log[-1][2],
                  "layers": [l.name for l in layers]})
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def rebuild_outputs(workdir: str) -> Dict[str, Any]:
  """Rewrites plots and report of a finished run from its JSON files (no recomputation)."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(workdir, "kronecker_metrics.json")) as f:
    saved = json.load(f)
  layers = [ks.LayerSpec(d["name"], tuple(d["path"]), tuple(d["shape"]), d["split"])
            for d in saved["layers"]]
  results = {}
  for t, r in saved["results"].items():
    r["shortcut"] = {l: {lab: {int(b): m for b, m in by_b.items()} for lab, by_b in v.items()}
                     for l, v in r["shortcut"].items()}
    results[int(t)] = r
  return write_outputs(workdir, config, results, layers, saved["timings"],
                       [tuple(x) for x in saved["train_log"]])
