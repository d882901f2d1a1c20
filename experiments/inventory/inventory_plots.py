"""Plots of the inventory study: arrival-model calibration, examples, backtest.

`plot_arrivals`: calibration of cumulative receipts and CRPS per lag of every
arrival model on the held-out orders, and Gen-QOT's 10-90% band against four
realised orders. `plot_backtest`: held-out return per policy and its paired
gain over the newsvendor (+- 2 SE), the policies' training curves, and one
product's held-out trajectory under each policy.
"""
from __future__ import annotations

import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def plot_arrivals(workdir, metrics, samples, test, num_lags):
  colors = {"genqot": "C0", "lead_time": "C1", "empirical": "C2", "oracle": "k"}
  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  for name, m in metrics.items():
    ax[0].plot(m["calibration_levels"], m["calibration_observed"], "o-", ms=3,
               color=colors[name], label=f"{name} (CRPS {m['crps']:.4f})")
    ax[1].plot(np.arange(num_lags), m["crps_per_lag"], "o-", ms=3, color=colors[name],
               label=name)
  ax[0].plot([0, 1], [0, 1], "k:", lw=1)
  ax[0].set(xlabel="nominal level", ylabel="P(PIT <= level)",
            title="Calibration of cumulative receipts (held-out)")
  ax[0].legend(fontsize=8)
  ax[1].set(xlabel="lag j (weeks)", ylabel="CRPS of cumulative share",
            title="CRPS per lag (held-out orders)")
  ax[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "genqot_calibration.png"), dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharey=True)
  for i, ax in enumerate(axes):
    cs = np.cumsum(np.asarray(samples["genqot"])[:, i], -1)
    lo, mid, hi = np.quantile(cs, [0.1, 0.5, 0.9], axis=0)
    ax.fill_between(np.arange(num_lags), lo, hi, alpha=0.3, label="Gen-QOT 10-90%")
    ax.plot(mid, "C0-", label="Gen-QOT median")
    ax.plot(np.cumsum(test["rho"][i]), "k.-", label="actual")
    ax.set(title=f"order {test['order'][i]:.0f} u, week {test['week'][i]}", xlabel="lag")
  axes[0].set_ylabel("cumulative share received")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "genqot_examples.png"), dpi=110)
  plt.close(fig)


def plot_backtest(workdir, table, curves, outs_by_name, scale):
  names = list(table)
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  colors = [f"C{i}" for i in range(len(names))]
  vals = [table[k]["true"]["return_mean"] for k in names]
  axes[0].bar(range(len(names)), vals, color=colors)
  lo = min(vals)
  axes[0].set_ylim(bottom=0.97 * lo, top=max(vals) + 0.01 * lo)
  axes[0].set(ylabel="discounted return / product", title="Held-out backtest (true arrivals)")
  diffs = [table[k]["diff_mean"] for k in names]
  errs = [2 * table[k]["diff_se"] for k in names]
  axes[1].bar(range(len(names)), diffs, yerr=errs, color=colors, capsize=3)
  axes[1].axhline(0.0, color="k", lw=0.8)
  axes[1].set(ylabel="paired difference vs newsvendor", title="Gain over newsvendor (+- 2 SE)")
  for ax in axes:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "backtest_rewards.png"), dpi=110)
  plt.close(fig)

  if curves:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (steps, c) in curves.items():
      c = np.asarray(c)
      w = max(1, len(c) // 30)
      ax.plot(np.asarray(steps)[w - 1:], np.convolve(c, np.ones(w) / w, mode="valid"),
              label=name)
    ax.set(xlabel="step", ylabel="normalised return (train sim)", title="Policy training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "policy_training.png"), dpi=110)
    plt.close(fig)

  # One product's trajectory under each policy.
  i = int(np.argsort(scale)[len(scale) // 2])
  fig, axes = plt.subplots(len(outs_by_name), 1, figsize=(9, 2.0 * len(outs_by_name)),
                           sharex=True)
  for ax, (name, outs) in zip(np.atleast_1d(axes), outs_by_name.items()):
    t = np.arange(outs.demand_ref.shape[1])
    ax.plot(t, outs.demand_ref[i], "k:", lw=1, label="demand")
    ax.plot(t, np.asarray(outs.inventory)[i], label="end inventory")
    ax.bar(t, np.asarray(outs.order)[i], alpha=0.3, color="C2", label="order")
    ax.plot(t, np.asarray(outs.arrivals)[i], "C3.", ms=4, label="arrivals")
    ax.set_ylabel(name, fontsize=8)
  np.atleast_1d(axes)[0].legend(fontsize=7, ncol=4)
  np.atleast_1d(axes)[-1].set_xlabel("held-out week")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "backtest_trajectories.png"), dpi=110)
  plt.close(fig)
