"""Runner: the Q-probe study (config: experiments/configs/qprobe.py).

  1. Problems: disjoint sets of n-digit additions for the LM's training
     documents, checkpoint selection, the probe's training prompts and the
     held-out test prompts (`arithmetic_task`).
  2. The LM: trained here through `experiments.lm` (data.source=files),
     checkpoints every `lm.checkpoint.every` steps; the study uses the
     checkpoint whose sampled pass@1 on the selection problems is nearest the
     middle of `task.target_pass1` among those inside it (else the nearest):
     a model that half-solves the task, so that selection has room to help.
     Or a Hugging Face checkpoint (`hf_dir`), used unchanged.
  3. Per seed s: k completions per probe and test prompt sampled from the LM
     (temperature T, sampling seed s, stopping at EOS or the wrong-answer
     flag), rewards r in {0, 1} checked by the program, embeddings phi
     (layer, pooling) of bos + x + y with y's stop token left out, and
     log p(y | x) from the same forward pass (`lm_access.features`); probes trained on the probe prompts
     for every loss (probe seed s; features standardised on the probe set).
  4. On the test prompts, per seed, the pass@1 of:
       base sampler           mean_i r_i
       Q-probe (loss, beta)   sum_i softmax(Q / beta)_i r_i
       best-of-k by loglik    r at argmax_i log p(y_i | x)   (ties split)
       pass@k oracle          max_i r_i
     plus greedy decoding; reported as mean, std and range over seeds and a
     95% bootstrap interval over test problems of the seed-averaged value.
  5. The planted check (`planted`), a plot and report.md.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Any

import ml_collections
import numpy as np

from experiments.configs import qprobe as qprobe_config
from experiments.qprobe import arithmetic_task as task
from experiments.qprobe import lm_access
from experiments.qprobe import planted
from experiments.qprobe import probe_losses as pl
from framework import config as config_lib
from framework import files


def default_config() -> ml_collections.ConfigDict:
  return qprobe_config.get_config()


def validate(config: ml_collections.ConfigDict) -> None:
  req = config_lib.require
  req(int(config.task.digits) >= 1, "task.digits", "must be >= 1")
  lo, hi = (float(b) for b in config.task.target_pass1)
  req(0 <= lo <= hi <= 1, "task.target_pass1", f"[{lo}, {hi}] must satisfy 0 <= lo <= hi <= 1")
  for field in ("select_problems", "probe_problems", "test_problems"):
    req(int(config.task[field]) >= 1, f"task.{field}", "must be >= 1")
  req(int(config.sampling.k) >= 2, "sampling.k", "must be >= 2 (selection needs candidates)")
  req(float(config.sampling.temperature) > 0, "sampling.temperature",
      "must be > 0: identical greedy samples leave nothing to select")
  for loss in config.probe.losses:
    req(loss in pl.LOSSES, "probe.losses", f"{loss!r} is not one of {pl.LOSSES}")
  for pooling in config.probe.poolings:
    req(pooling in lm_access.POOLINGS, "probe.poolings",
        f"{pooling!r} is not one of {lm_access.POOLINGS}")
  for beta in config.eval.betas:
    req(float(beta) >= 0, "eval.betas", f"{beta} must be >= 0 (0: argmax)")
  req(len(config.eval.seeds) >= 1, "eval.seeds", "needs at least one seed")
  if config.hf_dir:
    req(os.path.isdir(config.hf_dir), "hf_dir", f"not a directory: {config.hf_dir!r}")


# ------------------------------------------------------------------ the LM

def lm_run_config(config: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
  """The LM config of the study with its data paths filled in."""
  lm = copy.deepcopy(config.lm)
  lm.unlock()
  lm.seed = int(config.seed)
  lm.data.source = "files"
  lm.data.train_path = os.path.join(data_dir, "lm_train.jsonl")
  lm.data.validation_path = os.path.join(data_dir, "lm_validation.jsonl")
  lm.data.data_dir = os.path.join(data_dir, "cache")
  return lm


def extra_stops(lm: lm_access.LMHandle, config: Any) -> tuple[int, ...]:
  """Stop ids besides EOS: the wrong-answer flag when the corpus has flags."""
  if float(config.task.flag_fraction) <= 0:
    return ()
  return tuple(lm.encode(task.FLAG))


def sampled_pass1(lm: lm_access.LMHandle, problems: list[task.Problem], config: Any,
                  k: int = 2, seed: int = 12345) -> float:
  """Mean reward of k samples per problem at the study's sampling settings."""
  s = config.sampling
  stops = extra_stops(lm, config)
  comps = lm_access.sample_completions(
      lm, [task.prompt(p) for p in problems], k=k, max_new_tokens=int(s.max_new_tokens),
      temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p), seed=seed,
      batch_size=int(s.batch_size), extra_stops=stops)
  rev = bool(config.task.reverse_answer)
  return float(np.mean([[task.reward(p, lm_access.completion_text(lm, c, stops), rev)
                         for c in row] for p, row in zip(problems, comps)]))


def pick_step(curve: dict[int, float], band: tuple[float, float]) -> int:
  """The step whose pass@1 is nearest the band's middle, among those inside the
  band when any is (ties: the earlier step)."""
  lo, hi = band
  inside = {s: v for s, v in curve.items() if lo <= v <= hi}
  pool = inside or curve
  mid = (lo + hi) / 2
  return min(pool, key=lambda s: (abs(pool[s] - mid), s))


def get_lm(config: ml_collections.ConfigDict, workdir: str,
           splits: dict[str, list[task.Problem]]) -> tuple[lm_access.LMHandle, dict[str, Any]]:
  if config.hf_dir:
    return lm_access.load_hf_dir(config.hf_dir, config.hf_vocab, config.hf_vocab_path), {}
  from experiments import lm as lm_runner  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(workdir, "data")
  rev = bool(config.task.reverse_answer)
  task.write_jsonl(os.path.join(data_dir, "lm_train.jsonl"), splits["lm"], rev,
                   float(config.task.flag_fraction), int(config.task.split_seed))
  task.write_jsonl(os.path.join(data_dir, "lm_validation.jsonl"), splits["select"], rev)
  lm_config = lm_run_config(config, data_dir)
  run_dir = os.path.join(workdir, "lm")
  summary = lm_runner.run(lm_config, run_dir)
  steps = lm_access.checkpoint_steps(run_dir)
  curve = {}
  for step in steps:
    handle = lm_access.load_run(lm_config, run_dir, step)
    curve[step] = sampled_pass1(handle, splits["select"], config)
    logging.info("qprobe: LM step %d: sampled pass@1 %.3f on the selection problems",
                 step, curve[step])
  band = tuple(float(b) for b in config.task.target_pass1)
  chosen = pick_step(curve, band)
  summary = dict(summary, selection_curve=curve, chosen_step=chosen,
                 chosen_in_band=band[0] <= curve[chosen] <= band[1])
  return lm_access.load_run(lm_config, run_dir, chosen), summary


# ------------------------------------------------------------------ one seed

def rollouts(lm: lm_access.LMHandle, problems: list[task.Problem], config: Any, seed: int,
             layer: int) -> dict[str, np.ndarray]:
  """k samples per problem: rewards [n, k], loglik [n, k], embeddings per pooling
  [n, k, D], completion texts."""
  s = config.sampling
  k = int(s.k)
  prompts = [task.prompt(p) for p in problems]
  stops = extra_stops(lm, config)
  comps = lm_access.sample_completions(
      lm, prompts, k=k, max_new_tokens=int(s.max_new_tokens), temperature=float(s.temperature),
      top_k=int(s.top_k), top_p=float(s.top_p), seed=seed, batch_size=int(s.batch_size),
      extra_stops=stops)
  comps = [[lm_access.strip_stop(lm, c, stops) for c in row] for row in comps]
  texts = [[lm.decode(c) for c in row] for row in comps]
  rev = bool(config.task.reverse_answer)
  rewards = np.asarray([[task.reward(p, t, rev) for t in row] for p, row in zip(problems, texts)])
  enc = [[lm.bos_id] + lm.encode(p) for p in prompts]
  feats = lm_access.features(lm, [e[1:] for e in enc for _ in range(k)],
                             [c for row in comps for c in row], layer=layer,
                             batch_size=int(s.batch_size))
  n = len(problems)
  out = {"rewards": rewards, "loglik": feats["loglik"].reshape(n, k), "texts": texts}
  for pooling in lm_access.POOLINGS:
    out[pooling] = feats[pooling].reshape(n, k, -1)
  return out


def argmax_reward(scores: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Per prompt, r at argmax_i scores_i (ties split evenly)."""
  return pl.expected_reward(scores, r, 0.0)


def one_seed(lm: lm_access.LMHandle, splits: dict[str, list[task.Problem]],
             config: Any, seed: int) -> dict[str, Any]:
  """Per-test-problem pass@1 of every method for one seed: {method: [n_test]}."""
  layer = int(config.probe.layer)
  train = rollouts(lm, splits["probe"], config, seed=2 * seed, layer=layer)
  test = rollouts(lm, splits["test"], config, seed=2 * seed + 1, layer=layer)
  r = test["rewards"]
  per_problem: dict[str, np.ndarray] = {
      "base": r.mean(axis=1),
      "best_of_k_loglik": argmax_reward(test["loglik"], r),
      "pass_at_k": r.max(axis=1),
  }
  probe_info: dict[str, Any] = {}
  for pooling in config.probe.poolings:
    std = pl.Standardizer.fit(train[pooling])
    x_train, x_test = std(train[pooling]), std(test[pooling])
    for loss in config.probe.losses:
      pcfg = pl.ProbeConfig(loss=loss, steps=int(config.probe.steps),
                            learning_rate=float(config.probe.learning_rate),
                            l2=float(config.probe.l2), beta_train=float(config.probe.beta_train),
                            chunk=int(config.probe.chunk), seed=seed)
      params, info = pl.train_probe(x_train, train["rewards"], pcfg)
      w, b = np.asarray(params["w"], np.float64), float(params["b"])
      q_test = x_test @ w + b
      q_train = x_train @ w + b
      for beta in config.eval.betas:
        per_problem[f"qprobe/{pooling}/{loss}/beta={float(beta):g}"] = pl.expected_reward(
            q_test, r, float(beta))
      probe_info[f"{pooling}/{loss}"] = {
          "final_loss": info["losses"][-1] if info["losses"] else None,
          "train_pass1_argmax": float(pl.expected_reward(q_train, train["rewards"], 0.0).mean()),
          "pairs": info.get("pairs")}
  return {"per_problem": per_problem, "probe": probe_info,
          "train_base": float(train["rewards"].mean()),
          "examples": [(task.prompt(p), row[:4]) for p, row in
                       zip(splits["test"][:3], test["texts"][:3])]}


def greedy_pass1(lm: lm_access.LMHandle, problems: list[task.Problem], config: Any) -> np.ndarray:
  stops = extra_stops(lm, config)
  comps = lm_access.sample_completions(
      lm, [task.prompt(p) for p in problems], k=1,
      max_new_tokens=int(config.sampling.max_new_tokens), temperature=0.0,
      batch_size=int(config.sampling.batch_size), extra_stops=stops)
  return np.asarray([task.reward(p, lm_access.completion_text(lm, c[0], stops),
                                 bool(config.task.reverse_answer))
                     for p, c in zip(problems, comps)])


# ------------------------------------------------------------------ statistics

def bootstrap_ci(values: np.ndarray, num: int, seed: int = 0) -> tuple[float, float]:
  """95% percentile bootstrap interval of the mean over problems."""
  if num <= 0 or len(values) == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(values), size=(int(num), len(values)))
  means = values[idx].mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(runs: list[dict[str, Any]], num_bootstrap: int) -> dict[str, dict[str, Any]]:
  table = {}
  for method in runs[0]["per_problem"]:
    per_seed = np.asarray([run["per_problem"][method].mean() for run in runs])
    pooled = np.mean([run["per_problem"][method] for run in runs], axis=0)
    lo, hi = bootstrap_ci(pooled, num_bootstrap)
    table[method] = {"mean": float(per_seed.mean()),
                     "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0,
                     "min": float(per_seed.min()), "max": float(per_seed.max()),
                     "per_seed": [float(v) for v in per_seed], "ci95": [lo, hi]}
  return table


# ------------------------------------------------------------------ report

def plot(table: dict[str, Any], config: Any, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  betas = [float(b) for b in config.eval.betas]
  pools = list(config.probe.poolings)
  fig, axes = plt.subplots(1, len(pools), figsize=(5.5 * len(pools), 4), squeeze=False)
  xs = np.arange(len(betas))
  for ax, pooling in zip(axes[0], pools):
    for loss in config.probe.losses:
      rows = [table[f"qprobe/{pooling}/{loss}/beta={b:g}"] for b in betas]
      ax.errorbar(xs, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o",
                  capsize=3, label=f"Q-probe {loss}")
    for method, style in (("base", "k--"), ("best_of_k_loglik", "g:"), ("pass_at_k", "r-.")):
      ax.axhline(table[method]["mean"], color=style[0], ls=style[1:],
                 label={"base": "base pass@1", "best_of_k_loglik": "best-of-k loglik",
                        "pass_at_k": f"pass@{int(config.sampling.k)}"}[method])
    ax.set_xticks(xs, [f"{b:g}" for b in betas])
    ax.set_xlabel("beta (selection temperature; 0 = argmax)")
    ax.set_ylabel("pass@1 on held-out problems")
    ax.set_title(f"{pooling}-token embedding, layer {int(config.probe.layer)}")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _fmt(row: dict[str, Any]) -> str:
  return (f"{row['mean']:.3f} | {row['std']:.3f} | {row['min']:.3f}-{row['max']:.3f} | "
          f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]")


def write_report(workdir: str, config: Any, summary: dict[str, Any]) -> None:
  table = summary["table"]
  k = int(config.sampling.k)
  lines = ["# Q-probe study\n"]
  if config.smoke:
    lines.append("**Smoke test (tiny variant): the numbers below check the pipeline; they "
                 "are not findings.**\n")
  lines.append(
      f"LM: {summary['lm_source']}. Task: {int(config.task.digits)}-digit addition"
      f"{' (sum written least-significant digit first)' if config.task.reverse_answer else ''}"
      f"; LM corpus: one correct document per problem plus, with probability "
      f"{float(config.task.flag_fraction):g}, a wrong answer marked `{task.FLAG}`; "
      f"{int(config.task.probe_problems)} probe-training and {int(config.task.test_problems)} "
      f"held-out test problems (disjoint from each other and from the LM's "
      f"{int(config.task.lm_problems)} training problems). k = {k} samples per problem at "
      f"temperature {float(config.sampling.temperature):g}; embeddings of layer "
      f"{int(config.probe.layer)}; seeds {list(config.eval.seeds)} (sampling and probe init). "
      "Columns: mean over seeds | std over seeds | range | 95% bootstrap CI over test problems "
      "of the seed-averaged pass@1.\n")
  sel = summary["lm_selection"]
  if sel.get("selection_curve"):
    curve = ", ".join(f"{s}: {v:.2f}" for s, v in sorted(sel["selection_curve"].items()))
    lines.append(f"LM checkpoint: step {sel['chosen_step']} (sampled pass@1 by step on "
                 f"{int(config.task.select_problems)} selection problems: {curve}; target band "
                 f"{list(config.task.target_pass1)}, chosen inside it: {sel['chosen_in_band']}).\n")
  lines.append("| method | pass@1 | std | range | 95% CI |\n|---|---|---|---|---|")
  for method in ("base", "best_of_k_loglik", "pass_at_k"):
    lines.append(f"| {method} | {_fmt(table[method])} |")
  lines.append(f"| greedy | {summary['greedy_pass1']:.3f} | - | - | - |")
  for method, row in table.items():
    if method.startswith("qprobe/"):
      lines.append(f"| {method} | {_fmt(row)} |")
  best = max((m for m in table if m.startswith("qprobe/")), key=lambda m: table[m]["mean"])
  base, oracle = table["base"]["mean"], table["pass_at_k"]["mean"]
  lines.append("")
  lines.append(f"Best Q-probe setting by mean: `{best}` at {table[best]['mean']:.3f} vs base "
               f"{base:.3f}, best-of-{k} by log-likelihood {table['best_of_k_loglik']['mean']:.3f}"
               f", pass@{k} {oracle:.3f}. (Chosen after looking at the test numbers: an "
               "optimistic pick; compare the per-loss rows at a fixed beta.)")
  wins = [m for m in table if m.startswith("qprobe/") and table[m]["min"] > table["base"]["max"]]
  lines.append(f"Settings whose worst seed beats the base sampler's best seed: {len(wins)} of "
               f"{sum(m.startswith('qprobe/') for m in table)}.")
  over = [m for m in table if table[m]["mean"] > oracle + 1e-9]
  lines.append(f"Settings above pass@{k}: {over or 'none'} (pass@{k} bounds any selection "
               "among the same k samples).\n")
  lines.append("## Planted problem\n")
  p = summary["planted"]
  lines.append(f"Gaussian features (D = {int(config.planted.dim)}), reward a known linear "
               f"function (noise {float(config.planted.noise):g}); binary reward with base rate "
               f"{p['base_pass1']:.3f} and pass@{int(config.planted.k)} {p['pass_at_k']:.3f}.\n")
  lines.append("| loss | cos(w, w*) | argmax-selection pass@1 |\n|---|---|---|")
  for loss in pl.LOSSES:
    lines.append(f"| {loss} | {p[loss]['cosine']:.4f} | {p[loss]['pass1_argmax']:.3f} |")
  lines.append("\nmse is fitted to the continuous score, the others to the binary reward.\n")
  lines.append("## Samples\n")
  for prompt, texts in summary["examples"]:
    lines.append(f"- `{prompt}` -> {texts}")
  lines.append("\nPlot: qprobe.png (pass@1 vs beta per loss; error bars: std over seeds).")
  with files.atomic_open(os.path.join(workdir, "report.md")) as f:
    f.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------ run

def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  config_lib.check_keys(config, default_config())
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  t0 = time.time()
  splits = task.sample_splits(int(config.task.digits), {
      "lm": int(config.task.lm_problems), "select": int(config.task.select_problems),
      "probe": int(config.task.probe_problems), "test": int(config.task.test_problems)},
      seed=int(config.task.split_seed))
  lm, lm_summary = get_lm(config, workdir, splits)
  t_lm = time.time() - t0
  runs = []
  for seed in config.eval.seeds:
    runs.append(one_seed(lm, splits, config, int(seed)))
    logging.info("qprobe: seed %s done (%.0f s)", seed, time.time() - t0)
  table = summarize(runs, int(config.eval.bootstrap))
  p = config.planted
  summary: dict[str, Any] = {
      "lm_source": lm.source,
      "lm_eval_loss": lm_summary.get("eval_loss"),
      "lm_selection": {k: lm_summary.get(k) for k in
                       ("selection_curve", "chosen_step", "chosen_in_band")},
      "greedy_pass1": float(greedy_pass1(lm, splits["test"], config).mean()),
      "table": table,
      "probe": [run["probe"] for run in runs],
      "train_base": [run["train_base"] for run in runs],
      "planted": planted.run(int(p.n), int(p.k), int(p.dim), float(p.noise), int(p.seed),
                             steps=int(config.probe.steps)),
      "examples": runs[0]["examples"],
      "seconds": {"lm": t_lm, "total": time.time() - t0},
  }
  plot(table, config, os.path.join(workdir, "qprobe.png"))
  write_report(workdir, config, summary)
  files.write_text(os.path.join(workdir, "summary.json"),
                   json.dumps(summary, indent=2, default=str))
  short = {m: round(v["mean"], 4) for m, v in table.items()
           if not m.startswith("qprobe/") or "/beta=0/" in m + "/"}
  return {"workdir": workdir, "pass1": short, "greedy": summary["greedy_pass1"],
          "seconds": summary["seconds"]}
