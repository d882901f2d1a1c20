"""Runner: calibration of in-context learning vs shots and model size (Zhang et al.,
"A Study on the Calibration of In-context Learning"), on synthetic rules.

  python -m experiments.launch --config=experiments/configs/icl_calibration.py
  python -m experiments.launch --config=experiments/configs/icl_calibration.py \
      --config.checkpoint=hf:/path/to/llama_dir      # no training: evaluate that model

Steps:
 1. Data: `icl_synthetic` sequences of (x, y) pairs from a per-sequence random
    rule, written as JSONL for `data.source=files`.
 2. Models: for each size and training seed, an `experiments.lm` run (the
    launch path's LM runner, byte vocabulary) in <workdir>/models/<size>_s<seed>
    (re-running resumes / reuses finished runs).
 3. Evaluation: held-out episodes, each with shots 0..K before ONE query, the
    same query for every k. Label-restricted probabilities
    p(y | prompt) = softmax over the labels of log p(label | prompt).
    Episodes are split three ways, disjointly: A fits the temperature (and
    the Platt step of scaling-binning), B holds scaling-binning's bins, C is
    the test split every figure is measured on.
 4. Figures on C with percentile-bootstrap 95% intervals (resampling test
    episodes; with several training seeds, seeds then episodes), differences
    (between shot counts, or raw vs recalibrated) by the PAIRED bootstrap
    (same resampled episodes for both terms). A claim is made only when the
    interval of the difference excludes 0; otherwise "not resolved".
    The Bayes-optimal predictor of the rule prior (`icl_synthetic`) is the
    calibrated reference: its ECE is the estimator's floor at this sample size.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from experiments.eval import calibration as cal
from experiments.eval import checkpoint_loading
from experiments.eval import icl_scoring
from experiments.eval import icl_synthetic as syn
from framework import config as config_lib
from framework import files
from framework import progress as progress_lib

METHODS = ("raw", "temperature", "scaling_binning")
CI_METRICS = ("accuracy", "confidence", "overconfidence", "ece", "brier")


def default_config() -> ml_collections.ConfigDict:
  from experiments.configs import icl_calibration  # pylint: disable=g-import-not-at-top
  return icl_calibration.get_config()


def family_from(config: ml_collections.ConfigDict) -> syn.RuleFamily:
  f = config.family
  try:
    return syn.RuleFamily(alphabet=f.alphabet, num_features=int(f.num_features), labels=f.labels,
                          noise=float(f.noise), continuation_delimiter=f.continuation_delimiter,
                          example_delimiter=f.example_delimiter, rendering=f.rendering)
  except ValueError as err:
    raise config_lib.ConfigError(f"config.family: {err}") from None


def selected_sizes(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  sizes = [dict(s) for s in config.sizes]
  if config.size_names:
    wanted = [s.strip() for s in config.size_names.split(",") if s.strip()]
    known = [s["name"] for s in sizes]
    config_lib.require(all(w in known for w in wanted), "size_names",
                       f"{wanted} must be among the sizes {known}")
    sizes = [s for s in sizes if s["name"] in wanted]
  return sizes


def lm_config(config: ml_collections.ConfigDict, size: dict[str, Any], seed: int,
              paths: dict[str, str]) -> ml_collections.ConfigDict:
  """The `experiments.lm` config of one model: the quickstart's schema, this study's values."""
  from experiments.configs import lm_quickstart  # pylint: disable=g-import-not-at-top
  c = lm_quickstart.get_config()
  c.seed = int(seed)
  c.model.update({k: v for k, v in size.items() if k != "name"})
  c.data.update(dict(source="files", train_path=paths["train"],
                     validation_path=paths["validation"], vocab="byte",
                     data_dir=os.path.expanduser(config.data_dir),
                     seq_len=int(config.train.seq_len),
                     global_batch_size=int(config.train.global_batch_size),
                     eval_batches=int(config.train.eval_batches)))
  c.schedule.update(dict(peak_lr=float(config.train.peak_lr),
                         warmup_steps=int(config.train.warmup_steps)))
  c.trainer.update(dict(total_steps=int(config.train.total_steps),
                        log_every=int(config.train.log_every),
                        eval_every=int(config.train.total_steps),
                        progress_every_s=float(config.progress_every_s)))
  c.checkpoint.update(dict(every=int(config.train.total_steps), keep=1))
  c.mesh.shape = dict(config.mesh.shape)
  return c


def episode_text_length(family: syn.RuleFamily, n: int) -> int:
  per = 1 if family.rendering == "joint" else (
      family.num_features + len(family.continuation_delimiter) + 1)
  return n * per + (n - 1) * len(family.example_delimiter)


def validate(config: ml_collections.ConfigDict) -> syn.RuleFamily:
  config_lib.check_keys(config, default_config())
  family = family_from(config)
  req = config_lib.require
  shots = [int(k) for k in config.eval.shots]
  req(shots and min(shots) >= 0 and sorted(set(shots)) == shots, "eval.shots",
      f"{shots} must be distinct, increasing, non-negative")
  req(int(config.data.examples_per_doc) >= max(shots) + 1, "data.examples_per_doc",
      f"{config.data.examples_per_doc} must be > the largest shot count {max(shots)}: "
      "training sequences must show the model that many shots before a query")
  need = episode_text_length(family, int(config.data.examples_per_doc)) + 2
  req(config.checkpoint or int(config.train.seq_len) >= need, "train.seq_len",
      f"{config.train.seq_len} is shorter than one training sequence ({need} bytes with "
      "its EOS): sequences would be split and lose their rule")
  req(int(config.eval.num_episodes) >= 30, "eval.num_episodes", "must be >= 30 (3 splits)")
  req(int(config.seeds) >= 1, "seeds", "must be >= 1")
  selected_sizes(config)
  return family


# ------------------------------------------------------------------ training

@dataclasses.dataclass
class ModelRun:
  size: str
  seed: int
  workdir: str
  params: int = 0
  train_loss: Optional[float] = None
  eval_loss: Optional[float] = None
  seconds: float = 0.0
  steps: int = 0
  reused: bool = False       # the run was already complete: nothing trained this time


def train_models(config: ml_collections.ConfigDict, family: syn.RuleFamily,
                 workdir: str) -> list[ModelRun]:
  from experiments import lm  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(workdir, "data")
  paths = syn.write_training_files(
      family, data_dir, train_docs=int(config.data.train_docs),
      validation_docs=int(config.data.validation_docs),
      examples_per_doc=int(config.data.examples_per_doc), seed=int(config.data.seed))
  runs = []
  for size in selected_sizes(config):
    for seed in range(int(config.seeds)):
      run_dir = os.path.join(workdir, "models", f"{size['name']}_s{seed}")
      t0 = time.perf_counter()
      logging.info("training %s seed %d in %s", size["name"], seed, run_dir)
      summary = lm.run(lm_config(config, size, seed, paths), run_dir)
      runs.append(ModelRun(size["name"], seed, run_dir, int(summary["params"]),
                           summary.get("train_loss"), summary.get("eval_loss"),
                           time.perf_counter() - t0, int(summary["final_step"]),
                           summary.get("resumed_from") == summary["final_step"]))
  return runs


# ------------------------------------------------------------------ scoring

def label_logliks(lm: checkpoint_loading.LoadedLM, family: syn.RuleFamily,
                  episodes: syn.EvalSet, shots: Sequence[int], *, batch_size: int,
                  max_seq_len: int, progress: progress_lib.Progress,
                  prompt_prefix: str = "") -> dict[int, np.ndarray]:
  """{k: log p(label text | prefix + prompt) [N, m]} for every shot count."""
  if lm.bos_id is None and not prompt_prefix and any(
      not t for t in episodes.prompts(family, min(shots))[0]):
    raise config_lib.ConfigError(
        f"config.eval.prompt_prefix: {lm.description} has no beginning-of-sequence id and "
        f"the {min(shots)}-shot prompts are empty; give a prefix to condition on (e.g. a newline)")
  scorer = icl_scoring.SpanScorer(lm.module, lm.params, batch_size=batch_size,
                                  max_seq_len=max_seq_len, bos_id=lm.bos_id)
  cand_ids = [[lm.encode(t) for t in texts] for texts in episodes.candidates(family)]
  single = all(len(t) == 1 for row in cand_ids for t in row)
  union = sorted({t[0] for row in cand_ids for t in row}) if single else []
  column = {v: j for j, v in enumerate(union)}
  out = {}
  for k in shots:
    texts, _ = episodes.prompts(family, k)
    contexts = [lm.encode(prompt_prefix + t) for t in texts]
    if single:
      # one forward per prompt: valid when encode(prompt + label) = encode(prompt) + [label
      # id], as for byte vocabularies
      logp, trunc = scorer.next_token_logprobs(contexts, union, progress=progress)
      out[k] = np.asarray([[logp[n, column[t[0]]] for t in row]
                           for n, row in enumerate(cand_ids)])
    else:
      pairs = [(c, lab) for c, row in zip(contexts, cand_ids) for lab in row]
      s = scorer.score(pairs, progress=progress)
      out[k], trunc = s.logprob_sum.reshape(len(contexts), -1), s.truncated
    if trunc.any():
      logging.warning("k=%d: %d prompts lost context to max_seq_len=%d", k, int(trunc.sum()),
                      max_seq_len)
  return out


# ------------------------------------------------------------------ analysis

def splits(n: int, seed: int) -> dict[str, np.ndarray]:
  """Disjoint thirds: A (fit temperature / Platt), B (scaling-binning's bins), C (test)."""
  perm = np.random.default_rng(seed).permutation(n)
  a, b = n // 3, 2 * n // 3
  return {"A": np.sort(perm[:a]), "B": np.sort(perm[a:b]), "C": np.sort(perm[b:])}


def recalibrated(logliks: np.ndarray, gold: np.ndarray, split: dict[str, np.ndarray],
                 num_bins: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Probabilities on split C for each method, and the fitted parameters."""
  probs = cal.label_probs(logliks)
  conf, _, correct = cal.top_label(probs, gold)
  a, b, c = split["A"], split["B"], split["C"]
  temp = cal.fit_temperature(logliks[a], gold[a])
  sb = cal.fit_scaling_binning(conf, correct, a, b, num_bins=num_bins)
  out = {"raw": probs[c],
         "temperature": cal.apply_temperature(logliks[c], temp),
         "scaling_binning": cal.with_top_confidence(probs[c], sb(conf[c]))}
  return out, {"temperature": temp, "platt_a": sb.scaler.a, "platt_b": sb.scaler.b}


def resample_indices(n_per_group: Sequence[int], resamples: int, seed: int) -> list[np.ndarray]:
  """Bootstrap index draws into the concatenation of groups (one group: plain bootstrap;
  several: groups resampled, then examples within each drawn group)."""
  rng = np.random.default_rng(seed)
  offsets = np.concatenate([[0], np.cumsum(n_per_group)])[:-1]
  draws = []
  for _ in range(resamples):
    if len(n_per_group) == 1:
      draws.append(rng.integers(n_per_group[0], size=n_per_group[0]))
    else:
      picks = rng.integers(len(n_per_group), size=len(n_per_group))
      draws.append(np.concatenate([offsets[g] + rng.integers(n_per_group[g], size=n_per_group[g])
                                   for g in picks]))
  return draws


def metric_samples(probs: np.ndarray, gold: np.ndarray, draws: Sequence[np.ndarray],
                   num_bins: int) -> dict[str, np.ndarray]:
  conf, _, correct = cal.top_label(probs, gold)
  onehot = np.eye(probs.shape[1])[gold]
  sq = np.sum((probs - onehot) ** 2, axis=1)
  out = {m: np.zeros(len(draws)) for m in CI_METRICS}
  for r, idx in enumerate(draws):
    out["accuracy"][r] = correct[idx].mean()
    out["confidence"][r] = conf[idx].mean()
    out["overconfidence"][r] = conf[idx].mean() - correct[idx].mean()
    out["ece"][r] = cal.ece(conf[idx], correct[idx], num_bins, "width")
    out["brier"][r] = sq[idx].mean()
  return out


def interval(samples: np.ndarray) -> list[float]:
  lo, hi = np.quantile(samples, [0.025, 0.975])
  return [float(lo), float(hi)]


def verdict(diff_samples: np.ndarray, positive: str, negative: str) -> str:
  lo, hi = interval(diff_samples)
  if lo > 0:
    return positive
  if hi < 0:
    return negative
  return "not resolved"


@dataclasses.dataclass
class Cell:
  """One (model size, k, method): point metrics and intervals on the test split."""
  size: str
  k: int
  method: str
  metrics: dict[str, float]
  ci: dict[str, list[float]]


def analyse(config: ml_collections.ConfigDict, family: syn.RuleFamily, episodes: syn.EvalSet,
            by_size: dict[str, list[dict[int, np.ndarray]]], shots: Sequence[int]
            ) -> tuple[list[Cell], dict[str, Any], dict[str, Any]]:
  """Cells, fitted recalibration parameters, and the pairwise verdicts."""
  n = len(episodes.episodes)
  split = splits(n, int(config.eval.split_seed))
  bins = int(config.eval.num_bins)
  gold_all = {k: episodes.prompts(family, k)[1] for k in shots}
  cells, fits, samples = [], {}, {}
  resamples = int(config.eval.bootstrap_resamples)
  for size, per_seed in list(by_size.items()) + [("bayes", None)]:
    for k in shots:
      gold = gold_all[k]
      groups: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
      if per_seed is None:
        probs_c = episodes.bayes_probs(family, k)[split["C"]]
        groups = {"raw": [probs_c]}
        n_groups = [len(split["C"])]
      else:
        for s, logliks in enumerate(per_seed):
          probs, fit = recalibrated(logliks[k], gold, split, bins)
          fits[f"{size}/s{s}/k{k}"] = fit
          for m in METHODS:
            groups[m].append(probs[m])
        n_groups = [len(split["C"])] * len(per_seed)
      draws = resample_indices(n_groups, resamples, int(config.eval.bootstrap_seed))
      for m, parts in groups.items():
        probs = np.concatenate(parts)
        g = np.tile(gold[split["C"]], len(parts))
        s = metric_samples(probs, g, draws, bins)
        samples[(size, k, m)] = s
        point = cal.summary(probs, g)
        cells.append(Cell(size, k, m, point, {key: interval(v) for key, v in s.items()}))
  verdicts = compare(samples, list(by_size) + ["bayes"], shots)
  return cells, fits, verdicts


def low_shots(shots: Sequence[int]) -> list[int]:
  """The pre-specified low-shot set: 0 < k <= 4."""
  return [k for k in shots if 0 < k <= 4]


def compare(samples: dict[tuple, dict[str, np.ndarray]], sizes: Sequence[str],
            shots: Sequence[int]) -> dict[str, Any]:
  """Paired-bootstrap verdicts on pre-specified contrasts (no data-chosen k):
  accuracy k_max - k_0; low-shot ECE (mean over 0 < k <= 4) - ECE at k_0 (rise)
  and - ECE at k_max (fall); raw - recalibrated ECE (mean over k, and per k);
  between sizes (largest - smallest), accuracy at k_max and low-shot ECE."""
  out: dict[str, Any] = {}
  k0, kmax = shots[0], shots[-1]
  low = low_shots(shots)

  def acc(size, k):
    return samples[(size, k, "raw")]["accuracy"]

  def ece(size, k, m="raw"):
    return samples[(size, k, m)]["ece"]

  def low_ece(size, m="raw"):
    return np.mean([ece(size, k, m) for k in low], axis=0)

  def over(size, k):
    return samples[(size, k, "raw")]["overconfidence"]

  def contrast(diff, positive, negative):
    return {"ci": interval(diff), "verdict": verdict(diff, positive, negative)}

  for size in sizes:
    v: dict[str, Any] = {}
    v["accuracy_kmax_minus_k0"] = contrast(acc(size, kmax) - acc(size, k0), "rises", "falls")
    medians = [float(np.median(ece(size, k))) for k in shots]
    v["ece_argmax_k"] = shots[int(np.argmax(medians))]   # descriptive only
    if low:
      rise = contrast(low_ece(size) - ece(size, k0), "yes", "no")
      fall = contrast(low_ece(size) - ece(size, kmax), "yes", "no")
      v["ece_low_minus_k0"] = rise
      v["ece_low_minus_kmax"] = fall
      both = (rise["verdict"], fall["verdict"])
      v["ece_shape"] = {"verdict": "rise then fall" if both == ("yes", "yes") else
                        "not resolved" if "not resolved" in both else "no"}
    if low:
      # signed: mean confidence - accuracy (ECE is unsigned and biased upwards)
      v["overconfidence_low"] = contrast(np.mean([over(size, k) for k in low], axis=0),
                                         "over-confident", "under-confident")
    v["overconfidence_kmax"] = contrast(over(size, kmax), "over-confident", "under-confident")
    if (size, k0, "temperature") in samples:
      rec = {}
      for m in ("temperature", "scaling_binning"):
        mean_diff = np.mean([ece(size, k) - ece(size, k, m) for k in shots], axis=0)
        per_k = {k: verdict(ece(size, k) - ece(size, k, m), "lowers", "raises") for k in shots}
        rec[m] = {"mean_over_k": contrast(mean_diff, "lowers ECE", "raises ECE"),
                  "lowers_ece_at_k": [k for k, x in per_k.items() if x == "lowers"],
                  "raises_ece_at_k": [k for k, x in per_k.items() if x == "raises"],
                  "unresolved_k": [k for k, x in per_k.items() if x == "not resolved"]}
      v["recalibration"] = rec
    out[size] = v
  models = [s for s in sizes if s != "bayes"]
  if len(models) >= 2:
    small, large = models[0], models[-1]
    out["size"] = {
        "pair": [large, small],
        "accuracy_kmax": contrast(acc(large, kmax) - acc(small, kmax), "larger more accurate",
                                  "larger less accurate"),
        "ece_kmax": contrast(ece(large, kmax) - ece(small, kmax), "larger worse calibrated",
                             "larger better calibrated")}
    if low:
      out["size"]["ece_low"] = contrast(low_ece(large) - low_ece(small),
                                        "larger worse calibrated", "larger better calibrated")
  return out


# ------------------------------------------------------------------ outputs

def plot_curves(cells: Sequence[Cell], shots: Sequence[int], workdir: str) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  sizes = list(dict.fromkeys(c.size for c in cells))
  x = np.arange(len(shots))
  paths = []
  get = {(c.size, c.k, c.method): c for c in cells}
  for metric, fname, methods in (("accuracy", "accuracy_vs_shots.png", ("raw",)),
                                 ("ece", "ece_vs_shots.png", METHODS),
                                 ("confidence", "confidence_vs_shots.png", ("raw",)),
                                 ("brier", "brier_vs_shots.png", METHODS)):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, size in enumerate(sizes):
      color = "black" if size == "bayes" else f"C{i}"
      for m, ls in zip(METHODS, ("-", "--", ":")):
        if m not in methods or (size, shots[0], m) not in get:
          continue
        key = "ece_10" if metric == "ece" else metric
        y = [get[(size, k, m)].metrics[key] for k in shots]
        lo = [get[(size, k, m)].ci[metric][0] for k in shots]
        hi = [get[(size, k, m)].ci[metric][1] for k in shots]
        label = size if m == "raw" else f"{size} {m}"
        ax.plot(x, y, ls, marker="o", ms=3, color=color, label=label)
        ax.fill_between(x, lo, hi, color=color, alpha=0.12 if m == "raw" else 0.06)
    ax.set_xticks(x, [str(k) for k in shots])
    ax.set_xlabel("shots k")
    ax.set_ylabel({"ece": "ECE (10 equal-width bins)"}.get(metric, metric))
    ax.set_title(f"{metric} vs shots (test split, 95% bootstrap bands)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = os.path.join(workdir, fname)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
  return paths


def plot_reliability(size: str, per_seed: list[dict[int, np.ndarray]], gold_by_k: dict,
                     split: dict[str, np.ndarray], shots_shown: Sequence[int], num_bins: int,
                     workdir: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(METHODS), len(shots_shown),
                           figsize=(2.6 * len(shots_shown), 2.6 * len(METHODS)), squeeze=False)
  for j, k in enumerate(shots_shown):
    gold = gold_by_k[k]
    parts = [recalibrated(ll[k], gold, split, num_bins)[0] for ll in per_seed]
    g = np.tile(gold[split["C"]], len(parts))
    for i, m in enumerate(METHODS):
      conf, _, correct = cal.top_label(np.concatenate([p[m] for p in parts]), g)
      cal.reliability_axes(axes[i][j], conf, correct, 10, f"{size} k={k} {m}")
  fig.tight_layout()
  path = os.path.join(workdir, f"reliability_{size}.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def report(config, family, runs, cells, verdicts, fits, shots, workdir, seconds) -> str:
  smoke = bool(config.smoke)
  get = {(c.size, c.k, c.method): c for c in cells}
  sizes = list(dict.fromkeys(c.size for c in cells))
  L = ["# In-context-learning calibration study", ""]
  if smoke:
    L += ["**Smoke-scale configuration**: few training steps, small models and a small test "
          "split. The numbers below check that the pipeline runs end to end; they are not "
          "findings about in-context learning.", ""]
  n_c = len(splits(int(config.eval.num_episodes), int(config.eval.split_seed))["C"])
  L += [f"Rule family: alphabet `{family.alphabet}`, {family.num_features} feature(s) per x, "
        f"labels `{family.labels}`, label noise {family.noise}. Episodes: "
        f"{config.eval.num_episodes} held-out (A/B/C thirds: temperature & Platt fit / "
        f"scaling-binning bins / test n={n_c}), same query for every k. Intervals: 95% "
        f"percentile bootstrap ({config.eval.bootstrap_resamples} resamples"
        f"{', seeds then episodes' if int(config.seeds) > 1 else ' of test episodes'}); "
        "differences by the paired bootstrap. ECE: 10 equal-width bins, top label; its "
        "bootstrap intervals inherit the plug-in estimator's upward bias (they can sit above "
        "the point estimate), the debiased estimator is in the second table. "
        f"Wall time {seconds / 60:.1f} min.", ""]
  if runs:
    L += ["## Models", "", "| size | seed | params | steps | final train loss | eval loss | "
          "run s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
      fmt = lambda v: "-" if v is None else f"{v:.4f}"
      took = "reused" if r.reused else f"{r.seconds:.0f}"
      L.append(f"| {r.size} | {r.seed} | {r.params} | {r.steps} | {fmt(r.train_loss)} | "
               f"{fmt(r.eval_loss)} | {took} |")
    m = len(family.labels)
    label_dist = [1 - family.noise] + [family.noise / (m - 1)] * (m - 1)
    h = -sum(q * np.log(q) for q in label_dist if q > 0)     # entropy of a label given the rule
    if family.rendering == "joint":
      L += ["", f"Loss floor per byte if the rule were known: ln {len(family.alphabet)} "
            f"(the unpredictable symbol) + H(label noise) = "
            f"{np.log(len(family.alphabet)) + h:.3f} nats; with no in-context learning: "
            f"ln {2 * len(family.alphabet)} = {np.log(2 * len(family.alphabet)):.3f}.", ""]
    else:
      L += ["", f"The x symbols are unpredictable (ln {len(family.alphabet)} = "
            f"{np.log(len(family.alphabet)):.3f} nats each); only labels carry in-context "
            f"signal (label entropy floor H(noise) = {h:.3f} nats).", ""]
  L += ["## Accuracy and ECE vs shots (test split)", ""]
  head = "| size | method | " + " | ".join(f"k={k}" for k in shots) + " |"
  L += ["Accuracy [95% CI]:", "", head, "|---|---|" + "---:|" * len(shots)]
  for size in sizes:
    row = [f"{get[(size, k, 'raw')].metrics['accuracy']:.3f} "
           f"[{get[(size, k, 'raw')].ci['accuracy'][0]:.2f}, "
           f"{get[(size, k, 'raw')].ci['accuracy'][1]:.2f}]" for k in shots]
    L.append(f"| {size} | raw | " + " | ".join(row) + " |")
  L += ["", "ECE(10) [95% CI] and mean confidence:", "", head, "|---|---|" + "---:|" * len(shots)]
  for size in sizes:
    for m in METHODS:
      if (size, shots[0], m) not in get:
        continue
      cell = lambda k: get[(size, k, m)]
      row = [f"{cell(k).metrics['ece_10']:.3f} [{cell(k).ci['ece'][0]:.2f}, "
             f"{cell(k).ci['ece'][1]:.2f}] c={cell(k).metrics['confidence']:.2f}" for k in shots]
      L.append(f"| {size} | {m} | " + " | ".join(row) + " |")
  L += ["", "Other estimators of the raw predictions (debiased l1 ECE with 15 equal-mass "
        "bins, Kumar et al. 2019; MCE; Brier; NLL):", "",
        "| size | k | debiased ECE | ECE mass-15 | MCE(15) | Brier | NLL |",
        "|---|---:|---:|---:|---:|---:|---:|"]
  for size in sizes:
    for k in shots:
      m = get[(size, k, "raw")].metrics
      L.append(f"| {size} | {k} | {m['debiased_ece_15']:.3f} | {m['ece_mass_15']:.3f} | "
               f"{m['mce_15']:.3f} | {m['brier']:.3f} | {m['nll']:.3f} |")
  L += ["", "## What the numbers support", "",
        f"Contrasts fixed in advance; low-shot = k in {low_shots(shots)} (mean ECE). A verdict "
        "is given only when the paired 95% interval excludes 0 (no correction for the number "
        "of contrasts).", ""]
  for size in sizes:
    v = verdicts[size]
    a = v["accuracy_kmax_minus_k0"]
    L.append(f"- **{size}**: accuracy k={shots[-1]} - k={shots[0]}: "
             f"[{a['ci'][0]:+.3f}, {a['ci'][1]:+.3f}] -> {a['verdict']}.")
    if "ece_low_minus_k0" in v:
      r, f_ = v["ece_low_minus_k0"], v["ece_low_minus_kmax"]
      L.append(f"  low-shot ECE - ECE(k={shots[0]}): [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] "
               f"({r['verdict']}); low-shot ECE - ECE(k={shots[-1]}): [{f_['ci'][0]:+.3f}, "
               f"{f_['ci'][1]:+.3f}] ({f_['verdict']}) -> rise then fall: "
               f"{v['ece_shape']['verdict']}. Largest ECE at k={v['ece_argmax_k']}.")
    o = v["overconfidence_kmax"]
    if "overconfidence_low" in v:
      ol = v["overconfidence_low"]
      L.append(f"  confidence - accuracy, low-shot mean: [{ol['ci'][0]:+.3f}, {ol['ci'][1]:+.3f}] "
               f"({ol['verdict']}); at k={shots[-1]}: [{o['ci'][0]:+.3f}, {o['ci'][1]:+.3f}] "
               f"({o['verdict']}).")
    for m, r in v.get("recalibration", {}).items():
      mk = r["mean_over_k"]
      L.append(f"  {m}: raw - {m} ECE, mean over k: [{mk['ci'][0]:+.3f}, {mk['ci'][1]:+.3f}] "
               f"-> {mk['verdict']}; per k lowers at {r['lowers_ece_at_k']}, raises at "
               f"{r['raises_ece_at_k']}, not resolved at {r['unresolved_k']}.")
  if "size" in verdicts:
    z = verdicts["size"]
    large, small = z["pair"]
    L.append(f"- **size** ({large} - {small}): accuracy at k={shots[-1]}: "
             f"[{z['accuracy_kmax']['ci'][0]:+.3f}, {z['accuracy_kmax']['ci'][1]:+.3f}] -> "
             f"{z['accuracy_kmax']['verdict']}; ECE at k={shots[-1]}: "
             f"[{z['ece_kmax']['ci'][0]:+.3f}, {z['ece_kmax']['ci'][1]:+.3f}] -> "
             f"{z['ece_kmax']['verdict']}" + (
                 f"; low-shot ECE: [{z['ece_low']['ci'][0]:+.3f}, {z['ece_low']['ci'][1]:+.3f}]"
                 f" -> {z['ece_low']['verdict']}." if "ece_low" in z else "."))
  L += ["", "Paper trends (Zhang et al.): miscalibration in low-shot settings, ECE first "
        "rising then falling with k, recalibration helping. `bayes` is the calibrated "
        "reference: its ECE is the estimator's floor with this test split, and its low-shot "
        "verdicts show what sampling noise alone produces.", ""]
  temps = {key: f["temperature"] for key, f in fits.items()}
  if temps:
    L += ["Fitted temperatures (split A): " + ", ".join(f"{k} {t:.2f}" for k, t in
                                                        list(temps.items())[:40]), ""]
  L += ["Plots: accuracy_vs_shots.png, ece_vs_shots.png, confidence_vs_shots.png, "
        "brier_vs_shots.png, reliability_<size>.png. Data: results.json.", ""]
  return "\n".join(L)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  family = validate(config)
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  shots = [int(k) for k in config.eval.shots]
  if config.checkpoint:
    runs = []
    models = {"model": [checkpoint_loading.load(config.checkpoint)]}
  else:
    runs = train_models(config, family, workdir)
    models: dict[str, list] = {}
    for r in runs:
      models.setdefault(r.size, []).append(checkpoint_loading.load(r.workdir))
  episodes = syn.eval_set(family, int(config.eval.num_episodes), max(shots),
                          int(config.eval.episode_seed))
  total = sum(len(v) for v in models.values()) * len(shots) * len(episodes.episodes)
  progress = progress_lib.Progress(total, "icl-calibration", every_s=float(config.progress_every_s),
                                   unit="prompt")
  by_size = {size: [label_logliks(lm, family, episodes, shots,
                                  batch_size=int(config.eval.batch_size),
                                  max_seq_len=int(config.eval.max_seq_len), progress=progress,
                                  prompt_prefix=config.eval.prompt_prefix)
                    for lm in lms] for size, lms in models.items()}
  cells, fits, verdicts = analyse(config, family, episodes, by_size, shots)
  seconds = time.perf_counter() - t0
  if jax.process_index() == 0:
    plot_curves(cells, shots, workdir)
    split = splits(len(episodes.episodes), int(config.eval.split_seed))
    gold_by_k = {k: episodes.prompts(family, k)[1] for k in shots}
    shown = sorted({shots[0], shots[min(2, len(shots) - 1)], shots[len(shots) // 2], shots[-1]})
    for size, per_seed in by_size.items():
      plot_reliability(size, per_seed, gold_by_k, split, shown, int(config.eval.num_bins), workdir)
    results = {"shots": shots, "smoke": bool(config.smoke),
               "runs": [dataclasses.asdict(r) for r in runs],
               "cells": [dataclasses.asdict(c) for c in cells],
               "fits": fits, "verdicts": verdicts, "seconds": seconds}
    files.write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    files.write_text(os.path.join(workdir, "report.md"),
                     report(config, family, runs, cells, verdicts, fits, shots, workdir, seconds))
  get = {(c.size, c.k, c.method): c.metrics for c in cells}
  return {"workdir": os.path.abspath(workdir), "seconds": seconds, "smoke": bool(config.smoke),
          **{f"{s}/acc_k{k}": get[(s, k, "raw")]["accuracy"]
             for s in list(by_size) + ["bayes"] for k in (shots[0], shots[-1])},
          **{f"{s}/ece_k{k}": get[(s, k, "raw")]["ece_10"]
             for s in list(by_size) + ["bayes"] for k in (shots[0], shots[-1])},
          "verdicts": {s: {key: v["verdict"] for key, v in d.items()
                           if isinstance(v, dict) and "verdict" in v}
                       for s, d in verdicts.items()}}
