"""Plots and report of the Kronecker study, from the measured results alone.

figure1.png: cosine vs training step, one line per approximation, columns
GN | Adagrad, one row per layer (Morwani et al. 2024, Figure 1 layout; dotted:
GN held out). shortcuts.png: factors from mini-batch gradients, cosine vs batch
size at the last step with shortcuts. report.md: tables of the final step,
averages over layers, training curve. `rebuild_outputs(workdir)` rewrites all
three from config.json and kronecker_metrics.json without recomputing.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from experiments.kronecker import layer_taps as taps

APPROX_ORDER = ("optimal", "pi5", "pi2", "shampoo2", "shampoo", "kfac")
APPROX_LABELS = {"optimal": "optimal Kronecker", "pi5": "power iter. k=5",
                 "pi2": "power iter. k=2", "shampoo2": "Shampoo$^2$ (L⊗R, k=1)",
                 "shampoo": "Shampoo (L$^{1/2}$⊗R$^{1/2}$)", "kfac": "K-FAC"}


DPI = 120  # with the figure sizes below: ~10 pt labels legible at 1:1


def plot_figure1(results: Dict[int, Dict[str, Any]], layers, path: str) -> None:
  steps = sorted(results)
  views = (("gn", "Gauss-Newton (Fisher, labels from the model)"),
           ("adagrad", "Adagrad (sum g g$^T$)"))
  fig, axes = plt.subplots(len(layers), 2, figsize=(12, 1.0 + 3.4 * len(layers)),
                           squeeze=False, sharex=True)
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
      ax.set_title(f"{l.name} ({l.m}x{l.n}) — {title}", fontsize=10)
      ax.set_ylabel("cosine sim. to H")
      ax.grid(alpha=0.3)
      if i == len(layers) - 1:
        ax.set_xlabel("training step")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / (1.0 + 3.4 * len(layers))))
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def plot_shortcuts(shortcut: Dict[str, Any], layers, path: str, step: int) -> None:
  ncol = min(4, len(layers))
  nrow = -(-len(layers) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(4.8 * ncol, 0.6 + 3.6 * nrow),
                           squeeze=False)
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
    ax.set_title(f"{l.name}", fontsize=10)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("cosine to per-example H$_{GN}$")
    ax.grid(alpha=0.3)
  for j in range(len(layers), nrow * ncol):
    axes[j // ncol, j % ncol].axis("off")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(f"Factors from mini-batch gradients vs the GN reference H (step {step})",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def _model_fields(model) -> str:
  """The model's config fields as k=v (tuples and JSON lists print alike)."""
  fmt = lambda v: (f"({', '.join(str(x) for x in v)})" if isinstance(v, (list, tuple))
                   else str(v))
  return ", ".join(f"{k}={fmt(v)}" for k, v in sorted(dict(model).items()) if k != "name")


def _f(v, fmt="{:.3f}") -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "–"
  return fmt.format(v)


def write_report(path: str, config, results, layers, timings, train_log) -> Dict[str, Any]:
  final = max(results)
  res = results[final]
  lines = [f"# Kronecker structure of the curvature — {config.model.name}\n",
           "Reproduction (laptop scale) of Morwani et al. 2024, *A New Perspective on "
           "Shampoo's Preconditioner*: cosine similarity <H, H~>/(|H||H~|) between each "
           "layer's H and Kronecker approximations H~ = A⊗B. `figure1.png`: cosine vs "
           "training step (paper's Figure 1 layout; dotted: GN held out, see below); "
           "`shortcuts.png`: factors from mini-batch "
           "gradients. Best-scale relative Frobenius error = sqrt(1 - cos²) (in "
           "metrics.jsonl as `*/err`).\n",
           f"Model `{config.model.name}` ({_model_fields(config.model)}), "
           f"{config.trainer.total_steps} {config.optimizer.name} steps (b1 "
           f"{config.optimizer.b1}, b2 {config.optimizer.b2}, weight decay "
           f"{config.optimizer.weight_decay}; batch "
           f"{config.data.batch_size} of `{config.data.name}`, lr {config.schedule.peak_lr}); "
           f"final "
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
  layers = [taps.LayerSpec(d["name"], tuple(d["path"]), tuple(d["shape"]), d["split"])
            for d in saved["layers"]]
  results = {}
  for t, r in saved["results"].items():
    r["shortcut"] = {l: {lab: {int(b): m for b, m in by_b.items()} for lab, by_b in v.items()}
                     for l, v in r["shortcut"].items()}
    results[int(t)] = r
  return write_outputs(workdir, config, results, layers, saved["timings"],
                       [tuple(x) for x in saved["train_log"]])
