"""Plots and report.md of a margins run (`margins_runner`).

`plot_margin`: normalised margin / gamma* against the step, the gap
1 - fraction on a log scale, the full-data CE and lambda_t. `plot_features`:
Fourier spectra (modular addition), |u_i| and support share (parity), or
irrep shares (groups). `write_report`: the tables of margin and features.
"""
from __future__ import annotations

from typing import Dict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments.margins.features import Task


def plot_margin(history, task: Task, path: str) -> None:
  """Normalised margin / max vs step, the gap on a log scale, loss and lambda."""
  steps = np.array([h["step"] for h in history])
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  name = task.dataset.name
  if task.max_margin:
    frac = np.array([h["margin_fraction"] for h in history])
    axes[0].plot(steps, frac)
    axes[0].axhline(1.0, color="k", ls="--", lw=1, label="theoretical max")
    axes[0].set_ylabel("normalised margin / max margin")
    axes[0].set_ylim(max(frac.min(), -0.2) - 0.02, 1.05)
    axes[0].legend(loc="lower right")
    gap = np.maximum(1.0 - frac, 1e-7)
    axes[1].semilogy(steps, gap)
    axes[1].set_ylabel("1 - normalised margin / max")
    axes[1].set_title(f"final fraction {frac[-1]:.4f}")
  else:
    axes[0].plot(steps, [h["normalized_margin"] for h in history])
    axes[0].set_ylabel("normalised margin")
    axes[1].semilogy(steps, [h["norm_pow"] for h in history])
    axes[1].set_ylabel("||theta||_{2,nu}^nu")
  axes[0].set_title(f"{name}: L_(2,{task.model.homogeneity}) normalised "
                    "margin")
  axes[2].semilogy(steps, [max(h["ce"], 1e-45) for h in history],
                   label="mean CE")
  axes[2].semilogy(steps, [h["lambda"] for h in history], label="lambda")
  axes[2].legend()
  for ax in axes:
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_features(task: Task, params, stats, path: str) -> None:
  """Fourier spectra / parity support / irrep shares, one PNG."""
  p = task.dataset.num_classes
  order = np.argsort(-stats["_contrib"])
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  if task.kind == "modular_addition":
    spec = stats["_spectra"]
    idx = np.lexsort((-stats["_contrib"], spec.frequency))
    im = axes[0].imshow(spec.spectrum[idx].T, aspect="auto", origin="lower",
                        extent=[0, len(idx), 0.5, p // 2 + 0.5],
                        cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[0])
    axes[0].set_xlabel("neuron (sorted by frequency)")
    axes[0].set_ylabel("frequency j (+-j pooled)")
    axes[0].set_title("normalised Fourier power of (u, v, w)")
    axes[1].bar(np.arange(1, p // 2 + 1), stats["frequency_counts"])
    axes[1].set_xlabel("dominant frequency")
    axes[1].set_ylabel("# active neurons")
    axes[1].set_title(f"frequencies used: {len(stats['frequencies_used'])}"
                      f"/{p // 2}")
    # Largest neuron of the lowest frequency: the easiest wave to read.
    i = idx[0]
    a = np.arange(p)
    for k in ("u", "v", "w"):
      axes[2].plot(a, np.asarray(params[k])[i], "o-", ms=3, label=k)
    axes[2].set_title(f"neuron {i}: freq {spec.frequency[i]}, "
                      f"max power {spec.max_power[i]:.4f}")
    axes[2].set_xlabel("a / b / c")
    axes[2].legend()
  elif task.kind == "parity":
    u = np.asarray(params["u"])[order]
    im = axes[0].imshow(np.abs(u).T, aspect="auto", origin="lower",
                        cmap="magma")
    fig.colorbar(im, ax=axes[0])
    axes[0].set_xlabel("neuron (sorted by norm)")
    axes[0].set_ylabel("input coordinate")
    axes[0].set_title(f"|u_i|, S = {task.support.tolist()}")
    axes[1].bar(np.arange(len(order)), stats["_support_fraction"][order])
    axes[1].axhline(1.0, color="k", ls="--", lw=1)
    axes[1].set_xlabel("neuron (sorted by norm)")
    axes[1].set_title("||u_S||^2 / ||u||^2")
    axes[2].bar(np.arange(len(order)), stats["_contrib"][order])
    axes[2].set_xlabel("neuron (sorted by norm)")
    axes[2].set_title(f"||theta_i||^{task.model.homogeneity}")
  else:
    power = stats["_irrep_power"]
    share = power / power.sum(axis=1, keepdims=True)
    idx = np.lexsort((-stats["_contrib"], stats["_dominant"]))
    im = axes[0].imshow(share[idx].T, aspect="auto", origin="lower",
                        cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[0])
    axes[0].set_yticks(range(len(stats["irreps"])))
    axes[0].set_yticklabels(stats["irreps"])
    axes[0].set_xlabel("neuron (sorted by dominant irrep)")
    axes[0].set_title("share of ||theta_i||^2 per irrep")
    x = np.arange(len(stats["irreps"]))
    axes[1].bar(x - 0.2, stats["irrep_norm_share"], 0.4, label="trained")
    axes[1].bar(x + 0.2, stats["irrep_norm_share_predicted"], 0.4,
                label="construction")
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(stats["irreps"])
    axes[1].set_title("share of sum ||theta_i||^3 per irrep")
    axes[1].legend()
    axes[2].hist(share.max(axis=1), bins=20, range=(0.0, 1.0))
    axes[2].set_xlabel("max_rho share of ||theta_i||^2 in rho")
    axes[2].set_title("single-irrep share per neuron")
  fig.suptitle(task.dataset.name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _fmt(x) -> str:
  if isinstance(x, bool):
    return str(x)
  if isinstance(x, float):
    return f"{x:.6f}" if 1e-3 <= abs(x) < 1e4 else f"{x:.6g}"
  if isinstance(x, (list, tuple)):
    return "[" + ", ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                           for v in x) + "]"
  return str(x)


def write_report(config, task: Task, history, stats, seconds: float,
                 path: str, figures: Dict[str, str]) -> None:
  final = history[-1]
  lines = [f"# {task.dataset.name}: margin maximisation "
           "(Morwani et al., ICLR 2024)", ""]
  lines += [f"- task: `{task.kind}`, model: `{task.model}`",
            f"- homogeneity nu = {task.model.homogeneity}; norm "
            "||theta||_{2,nu} = (sum_i ||theta_i||_2^nu)^(1/nu); normalised "
            "margin = min_(x,y) (f[y] - max_{y'!=y} f[y']) / ||theta||_{2,nu}^nu",
            f"- training: {config.trainer.total_steps} steps, {config.optimizer.name} "
            f"lr {config.schedule.peak_lr:g} -> "
            f"{config.schedule.peak_lr * config.schedule.end_lr_fraction:g} "
            f"({config.schedule.name}), lambda "
            f"{config.model.lambda_start:g} -> {config.model.lambda_end:g}, "
            f"batch {'full' if not config.data.batch_size else config.data.batch_size}, "
            f"log objective {config.model.log_objective}",
            f"- wall time: {seconds:.1f} s", ""]
  theory = {
      "modular_addition": "gamma* = sqrt(2/27) / (sqrt(p) (p - 1))",
      "parity": "gamma* = k! sqrt(2 (k+1)^-(k+1))",
      "group": "gamma* = 2/(3 sqrt(3) |G|^1.5) min_tau max_{rho != 1} "
               "lambda_rho(tau)/sqrt(d_rho) (LP over class functions tau); "
               "equals 2 / (3 sqrt(3|G|) sum_{rho != 1} d_rho^2.5 / kappa_rho) "
               "when the character condition holds (experiments/margins/margins.py)",
  }[task.kind]
  if task.max_margin:
    lines += [f"- theoretical maximum: {theory}", ""]
  lines += ["## Margin", "", "| quantity | value |", "| --- | --- |",
            f"| final normalised margin | {final['normalized_margin']:.6g} |"]
  if task.max_margin:
    best = max(h["margin_fraction"] for h in history)
    lines += [f"| theoretical max margin | {task.max_margin:.6g} |",
              f"| final fraction of max | {final['margin_fraction']:.4f} |",
              f"| best fraction of max (logged) | {best:.4f} |"]
  lines += [f"| train accuracy | {final['accuracy']:.4f} |",
            f"| final mean CE | {final['ce']:.3g} |", ""]
  lines += ["## Features", "", "| statistic | value |", "| --- | --- |"]
  for k, v in stats.items():
    if not k.startswith("_"):
      lines.append(f"| {k} | {_fmt(v)} |")
  lines += ["", "Active neurons: ||theta_i||^nu >= "
            f"{config.analysis.active_fraction} x the largest.", ""]
  for name, fig in figures.items():
    lines += [f"![{name}]({fig})", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
