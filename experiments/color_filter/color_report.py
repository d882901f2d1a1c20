"""Curves and report.md of the CoLoR-Filter study.

Figures, all held-out target loss in nats per byte (the LM's eval/loss on
the held-out target documents, token-weighted over their packed sequences):
  curves.png  loss vs training tokens, one panel per tau: each selection
              method (mean over seeds, min-max band) and the random baseline
              (the whole pool, trained longer);
  tau.png     final loss vs tau per method (min-max bars), random at the same
              tokens as a line.
Data-efficiency factor of a run family at T tokens: T_r / T, where T_r is
where the seed-mean random curve (linear between evaluations) first reaches
the family's seed-mean final loss; beyond the random run's end it is only a
lower bound (">"), before its first evaluation an upper bound ("<").
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from framework import files
from framework import metrics as metrics_lib


def eval_curve(run_dir: str) -> list[tuple[int, float]]:
  records = metrics_lib.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  return sorted({r["step"]: r["eval/loss"] for r in records if "eval/loss" in r}.items())


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float, float, float]]:
  """(step, mean, min, max) over the runs at the steps all of them evaluated."""
  steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves])) if curves else []
  out = []
  for s in steps:
    vals = [dict(c)[s] for c in curves]
    out.append((s, float(np.mean(vals)), float(np.min(vals)), float(np.max(vals))))
  return out


def crossing(curve: Sequence[tuple[float, float]], level: float) -> tuple[Optional[float], str]:
  """(x, kind): the first x where the piecewise-linear curve (x, y) falls to
  `level`; kind "=" (found), ">" (never: x is the last point, a lower bound)
  or "<" (already below at the first point: x is that point, an upper bound)."""
  if not curve:
    return None, "?"
  if curve[0][1] <= level:
    return curve[0][0], "<"
  for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
    if y1 <= level:
      return x0 + (x1 - x0) * (y0 - level) / (y0 - y1), "="
  return curve[-1][0], ">"


def _fmt(x: Optional[float], nd: int = 3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def write_report(config: Any, workdir: str, *, pool_dir: str, runs: Mapping[str, dict],
                 evals: Mapping[str, dict], selections: Mapping[str, dict],
                 pool_rows: Sequence[dict], inputs: Mapping[str, Mapping[str, float]],
                 base_evals: Optional[Mapping[str, dict]] = None) -> dict[str, Any]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  with open(os.path.join(pool_dir, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  target = manifest["params"]["target_domain"]
  tokens_per_step = int(config.lm.data.global_batch_size) * int(config.lm.data.seq_len)
  T = int(config.targets.total_steps)
  seeds = list(config.targets.seeds)

  families: dict[tuple[str, float], list[str]] = collections.defaultdict(list)
  for name, r in runs.items():
    families[(r["method"], float(r["tau"]))].append(name)
  curves = {k: {runs[n]["seed"]: eval_curve(runs[n]["dir"]) for n in v} for k, v in families.items()}
  random_key = next((k for k in families if k[0] == "random"), None)
  random_mean = mean_curve(list(curves[random_key].values())) if random_key else []
  random_xy = [(s * tokens_per_step, m) for s, m, _, _ in random_mean]
  random_at_t = {seed: dict(c).get(T) for seed, c in curves[random_key].items()} if random_key else {}

  rows = []
  for (method, tau), names in sorted(families.items()):
    if method == "random":
      continue
    final = {seed: dict(c).get(T) for seed, c in curves[(method, tau)].items()}
    vals = [v for v in final.values() if v is not None]
    mean = float(np.mean(vals)) if vals else None
    x, kind = crossing(random_xy, mean) if mean is not None else (None, "?")
    factor = None if x is None else x / (T * tokens_per_step)
    wins_random = sum(1 for s in seeds if final.get(s) is not None and random_at_t.get(s) is not None
                      and final[s] < random_at_t[s])
    rows.append({"method": method, "tau": tau, "final": final, "mean": mean,
                 "min": min(vals) if vals else None, "max": max(vals) if vals else None,
                 "std": float(np.std(vals)) if vals else None,
                 "efficiency": factor, "efficiency_kind": kind, "wins_vs_random": wins_random})
  by_key = {(r["method"], r["tau"]): r for r in rows}
  for r in rows:   # paired by seed against every other method at the same tau
    r["wins_vs"] = {}
    for (m, tau), other in by_key.items():
      if tau == r["tau"] and m != r["method"]:
        r["wins_vs"][m] = sum(1 for s in seeds if r["final"].get(s) is not None
                              and other["final"].get(s) is not None
                              and r["final"][s] < other["final"][s])
  rvals = [v for v in random_at_t.values() if v is not None]
  random_row = {"mean": float(np.mean(rvals)) if rvals else None,
                "min": min(rvals) if rvals else None, "max": max(rvals) if rvals else None}

  taus = sorted({tau for (m, tau) in families if m != "random"})
  methods = sorted({m for (m, _) in families if m != "random"})

  # ---------------------------------------------------------------- figures
  colors = {"color": "C0", "cond_only": "C1", "fasttext": "C2", "random": "C7"}
  fig, axes = plt.subplots(1, len(taus), figsize=(5 * len(taus), 4), squeeze=False)
  for ax, tau in zip(axes[0], taus):
    for method in methods:
      if (method, tau) not in curves:
        continue
      mc = mean_curve(list(curves[(method, tau)].values()))
      xs = [s * tokens_per_step for s, *_ in mc]
      ax.plot(xs, [m for _, m, _, _ in mc], "o-", color=colors.get(method), label=method, ms=3)
      ax.fill_between(xs, [lo for *_, lo, _ in mc], [hi for *_, hi in mc], color=colors.get(method),
                      alpha=0.2)
    if random_mean:
      xs = [s * tokens_per_step for s, *_ in random_mean]
      ax.plot(xs, [m for _, m, _, _ in random_mean], "s--", color=colors["random"],
              label="random (pool)", ms=3)
      ax.fill_between(xs, [lo for *_, lo, _ in random_mean], [hi for *_, hi in random_mean],
                      color=colors["random"], alpha=0.2)
    ax.axvline(T * tokens_per_step, color="k", lw=0.5, ls=":")
    ax.set_title(f"tau = {tau:g}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"held-out {target} loss (nats/byte)")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "curves.png"), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for i, method in enumerate(methods):
    rs = [by_key[(method, tau)] for tau in taus if (method, tau) in by_key]
    xs = np.asarray([r["tau"] for r in rs]) * (1 + 0.03 * (i - 1))
    means = np.asarray([r["mean"] for r in rs], dtype=float)
    err = np.asarray([[r["mean"] - r["min"] for r in rs], [r["max"] - r["mean"] for r in rs]])
    ax.errorbar(xs, means, yerr=err, fmt="o-", color=colors.get(method), label=method, capsize=3)
  if random_row["mean"] is not None:
    ax.axhline(random_row["mean"], color=colors["random"], ls="--", label="random (pool)")
    ax.axhspan(random_row["min"], random_row["max"], color=colors["random"], alpha=0.15)
  ax.set_xscale("log", base=2)
  ax.set_xticks(taus)
  ax.set_xticklabels([f"{t:g}" for t in taus])
  ax.set_xlabel("tau (keep 1/tau of the pool)")
  ax.set_ylabel(f"held-out {target} loss at {T * tokens_per_step} tokens")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "tau.png"), dpi=110)
  plt.close(fig)

  # ------------------------------------------------------------ diagnostics
  domains = sorted({r["domain"] for r in pool_rows})
  by_dom = collections.defaultdict(list)
  for r in pool_rows:
    by_dom[r["domain"]].append(r["id"])
  score_table = {}
  for dom in domains:
    ids = by_dom[dom]
    p = np.asarray([inputs["prior"][i] for i in ids])
    c = np.asarray([inputs["cond"][i] for i in ids])
    row = {"docs": len(ids), "prior_loss": float(p.mean()), "cond_loss": float(c.mean()),
           "color_score": float((p - c).mean())}
    if "fasttext" in inputs:
      row["fasttext_p"] = float(np.mean([inputs["fasttext"][i] for i in ids]))
    score_table[dom] = row
  pool_share = len(by_dom[target]) / max(len(pool_rows), 1)
  throughput = {}
  for name in ("prior", "cond"):
    path = os.path.join(workdir, "scores", name, "throughput.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        throughput[name] = json.load(f)

  # ----------------------------------------------------------------- report
  L = []
  smoke = bool(config.get("smoke", False))
  L.append(f"# CoLoR-Filter study ({config.get('variant', '')})\n")
  if smoke:
    L.append("**Smoke scale.** Tiny models (a few hundred thousand parameters), a few hundred "
             "training steps, two seeds, on a shared 2-core CPU: these numbers check that the "
             "chain runs and say which way the effect points at this scale; they are not "
             "findings about CoLoR-Filter.\n")
  L.append(f"Target domain `{target}`; pool {sum(manifest['counts']['pool'].values())} documents "
           f"({pool_share:.1%} {target}), target set {sum(manifest['counts']['target'].values())}, "
           f"held-out {sum(manifest['counts']['heldout'].values())} "
           f"({manifest['counts']['heldout'].get(target, 0)} {target}). Pool sources: "
           + ", ".join(f"{d} ({s})" for d, s in sorted(manifest["sources"].items())) + ".\n")
  L.append(f"Every target model trains {T} steps x {tokens_per_step} tokens = "
           f"{T * tokens_per_step} token positions (byte tokens); random (the whole pool) "
           f"{int(config.targets.random_steps_factor)}x as long. Losses: nats/byte on held-out "
           f"{target} documents. Seeds {seeds} (model init and data order; the selections are "
           "fixed).\n")
  if base_evals:
    L.append("## Prior and conditional models (held-out loss per domain, nats/byte)\n")
    L.append("| model | " + " | ".join(domains) + " |\n|---|" + "---|" * len(domains))
    for name, per in base_evals.items():
      L.append(f"| {name} | " + " | ".join(_fmt(per.get(d)) for d in domains) + " |")
    L.append("")
  L.append("## Scores in the pool, mean per domain\n")
  cols = ["docs", "prior_loss", "cond_loss", "color_score"] + (
      ["fasttext_p"] if "fasttext" in inputs else [])
  L.append("| domain | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
  for dom in domains:
    L.append(f"| {dom} | " + " | ".join(
        str(score_table[dom][c]) if c == "docs" else _fmt(score_table[dom][c]) for c in cols) + " |")
  L.append("\n## Selections: share of the target domain\n")
  L.append(f"Pool: {pool_share:.1%}.\n")
  L.append("| selection | selected | bytes | epochs in training | " + f"{target} share | domains |"
           "\n|---|---|---|---|---|---|")
  for name, s in sorted(selections.items()):
    share = s["domains"].get(target, 0) / max(s["num_selected"], 1)
    nbytes = int(s.get("text_bytes", 0))
    epochs = T * tokens_per_step / nbytes if nbytes else float("nan")
    L.append(f"| {name} | {s['num_selected']} | {nbytes} | {epochs:.2f} | {share:.1%} | "
             f"{s['domains']} |")
  L.append("\n## Held-out target loss at equal tokens\n")
  L.append(f"Random (whole pool) at {T} steps: {_fmt(random_row['mean'])} "
           f"[{_fmt(random_row['min'])}, {_fmt(random_row['max'])}] (mean [min, max] over seeds).\n")
  L.append("| method | tau | loss mean | [min, max] | std | lower than random (seeds) | "
           + " | ".join(f"lower than {m} (seeds)" for m in methods)
           + " | data-efficiency vs random |\n|---|---|---|---|---|---|" + "---|" * len(methods) + "---|")
  for r in rows:
    eff = "n/a" if r["efficiency"] is None else f"{r['efficiency_kind'] if r['efficiency_kind'] != '=' else ''}{r['efficiency']:.2f}x"
    wins = " | ".join("-" if m not in r["wins_vs"] else f"{r['wins_vs'][m]}/{len(seeds)}"
                      for m in methods)
    L.append(f"| {r['method']} | {r['tau']:g} | {_fmt(r['mean'])} | [{_fmt(r['min'])}, "
             f"{_fmt(r['max'])}] | {_fmt(r['std'], 4)} | {r['wins_vs_random']}/{len(seeds)} | "
             f"{wins} | {eff} |")
  L.append("\nData-efficiency: random-selection tokens needed to reach the row's mean loss, "
           "divided by the row's tokens (`>`: random never got there within its run, a lower "
           "bound; `<`: random was already there at its first evaluation).\n")
  L.append("## Final loss on every held-out domain (mean over seeds, nats/byte)\n")
  L.append("| run family | " + " | ".join(domains) + " |\n|---|" + "---|" * len(domains))
  for (method, tau), names in sorted(families.items()):
    per = {d: float(np.mean([evals[n][d] for n in names if n in evals])) for d in domains}
    L.append(f"| {method} tau={tau:g} | " + " | ".join(_fmt(per[d]) for d in domains) + " |")
  L.append("\n(Every row at equal tokens: random's from its checkpoint at that step.)\n")
  if throughput:
    L.append("## Scoring throughput\n")
    for name, t in throughput.items():
      L.append(f"- {name}: {t['docs']} docs, {t['tokens']} tokens in {t['seconds']:.1f} s: "
               f"{t['docs_per_s']:.1f} docs/s, {t['tokens_per_s']:.0f} tokens/s")
    L.append("")
  L.append("## What the numbers say\n")
  L.extend(findings(rows, by_key, random_row, seeds, target, selections, pool_share, smoke))
  random_names = families.get(random_key, []) if random_key else []
  if random_names:
    rnd = {d: float(np.mean([evals[n][d] for n in random_names if n in evals])) for d in domains}
    for (method, tau), names in sorted(families.items()):
      if method != "color":
        continue
      per = {d: float(np.mean([evals[n][d] for n in names if n in evals])) for d in domains}
      worse = [f"{d} {per[d]:.3f} vs {rnd[d]:.3f}" for d in domains if d != target and per[d] > rnd[d]]
      better = [f"{d} {per[d]:.3f} vs {rnd[d]:.3f}" for d in domains if d != target and per[d] <= rnd[d]]
      L.append(f"- Other domains, CoLoR tau={tau:g} vs random at equal tokens (per-document "
               f"scorer, seed means): higher loss on {', '.join(worse) or 'none'}; lower or "
               f"equal on {', '.join(better) or 'none'}.")
  L.append("\nFigures: curves.png (loss vs tokens), tau.png (loss vs tau).\n")
  files.write_text(os.path.join(workdir, "report.md"), "\n".join(L) + "\n")
  return {"target_domain": target, "tokens_per_run": T * tokens_per_step,
          "random": random_row, "rows": rows, "selections": {
              k: {"num_selected": v["num_selected"], "domains": v["domains"]}
              for k, v in selections.items()},
          "scores_by_domain": score_table, "throughput": throughput}


def findings(rows, by_key, random_row, seeds, target, selections, pool_share, smoke) -> list[str]:
  """Sentences that follow from the table, nothing more."""
  out = []
  n = len(seeds)
  for r in rows:
    if r["method"] != "color":
      continue
    s = selections.get(f"color_tau{r['tau']:g}")
    share = s["domains"].get(target, 0) / max(s["num_selected"], 1) if s else float("nan")
    verdict = ("lower than random in every seed" if r["wins_vs_random"] == n else
               f"lower than random in {r['wins_vs_random']} of {n} seeds")
    vc = "".join(
        f"; lower than {m} ({_fmt(by_key[(m, r['tau'])]['mean'])}) in "
        + ("every seed" if w == n else f"{w} of {n} seeds")
        for m, w in sorted(r["wins_vs"].items()))
    eff = ("" if r["efficiency"] is None else
           f"; random needs {r['efficiency_kind'] if r['efficiency_kind'] != '=' else ''}"
           f"{r['efficiency']:.2f}x the tokens to match")
    out.append(f"- CoLoR tau={r['tau']:g}: {target} share of the selection {share:.1%} "
               f"(pool {pool_share:.1%}); held-out loss {_fmt(r['mean'])} vs random "
               f"{_fmt(random_row['mean'])}: {verdict}{vc}{eff}.")
  color_rows = sorted((r for r in rows if r["method"] == "color" and r["efficiency"] is not None),
                      key=lambda r: r["tau"])
  if len(color_rows) > 1:
    out.append("- CoLoR's data-efficiency factor vs random by tau: " + ", ".join(
        f"tau={r['tau']:g}: {r['efficiency_kind'] if r['efficiency_kind'] != '=' else ''}"
        f"{r['efficiency']:.2f}x" for r in color_rows) + ".")
  if n < 3:
    out.append(f"- {n} seeds: the min-max ranges above are the only measure of spread; "
               "differences smaller than them are not resolved.")
  if smoke:
    out.append("- Smoke scale: the direction of the effect at this size, not its size at scale.")
  return out
