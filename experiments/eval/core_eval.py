"""Runner: a CORE-style in-context-learning evaluation of one LM checkpoint.

  python -m experiments.launch --config=experiments/configs/eval_core.py \
      --config.checkpoint=runs/quickstart          # or hf:/path/to/llama_dir

Every task of the task list (`icl_tasks.TaskSpec`; llm-foundry/DCLM format)
is scored at each of its shot counts k with `icl_scoring.SpanScorer`:
  language_modeling  correct iff the greedy continuation equals the gold one
                     token for token;
  multiple_choice,   each choice j gets s_j = log p(continuation_j | prompt_j),
  schema             normalised per the task (mean per token by default);
                     correct iff argmax_j s_j = gold (ties: lowest j).
Accuracy a, the task's random baseline r, centered accuracy (a - r)/(1 - r),
and CORE = the mean centered accuracy over every (task, k) entry (Li et al.
2024, DataComp-LM). For choice tasks the label-restricted distribution
softmax_j(sum log p(continuation_j | prompt_j)) also gives calibration figures
(top-label ECE with 15 equal-width bins, Brier).

Outputs in the run directory: results.json (per task and k: n, accuracy,
centered, baseline, mean continuation log-prob, truncated fraction,
examples/s), results.md (the same as a table plus CORE), progress lines with
rate and ETA while scoring.
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
from experiments.eval import icl_tasks
from framework import config as config_lib
from framework import files
from framework import mesh as mesh_lib
from framework import progress as progress_lib
from framework import sharding as sharding_lib


def default_config() -> ml_collections.ConfigDict:
  from experiments.configs import eval_core  # pylint: disable=g-import-not-at-top
  return eval_core.get_config()


@dataclasses.dataclass
class TaskResult:
  label: str
  icl_task_type: str
  num_fewshot: int
  num_examples: int
  accuracy: float
  random_baseline: float
  centered_accuracy: float
  mean_logprob: float          # mean over examples of the gold continuation's summed log-prob
  truncated_fraction: float
  seconds: float
  examples_per_s: float
  ece_15: Optional[float] = None
  brier: Optional[float] = None


@dataclasses.dataclass
class Scored:
  """Per-example outcome of one (task, k): correct [N], choice scores (ragged)."""
  correct: np.ndarray
  choice_scores: list[np.ndarray]
  choice_logprob_sums: list[np.ndarray]
  gold: np.ndarray
  gold_logprob: np.ndarray
  truncated: np.ndarray


def tokenize_requests(encode, requests: Sequence[icl_tasks.Request]
                      ) -> list[tuple[list[int], list[int]]]:
  return [(encode(r.context), encode(r.continuation)) for r in requests]


def aggregate(spec: icl_tasks.TaskSpec, examples: Sequence[dict],
              requests: Sequence[icl_tasks.Request],
              scores: icl_scoring.SpanScores) -> Scored:
  """Per-example correctness from per-request scores (module docstring)."""
  n = len(examples)
  by_example: list[list[int]] = [[] for _ in range(n)]
  for idx, r in enumerate(requests):
    by_example[r.example].append(idx)
  correct = np.zeros(n, bool)
  gold = np.zeros(n, np.int64)
  gold_lp = np.zeros(n)
  trunc = np.zeros(n, bool)
  choice_scores, sums = [], []
  for i, idxs in enumerate(by_example):
    idxs = sorted(idxs, key=lambda j: requests[j].choice)
    s = scores.logprob_sum[idxs]
    trunc[i] = bool(scores.truncated[idxs].any())
    if spec.icl_task_type == "language_modeling":
      correct[i] = bool(scores.greedy_match[idxs[0]])
      gold_lp[i] = s[0]
      choice_scores.append(s)
      sums.append(s)
      continue
    if spec.normalization == "token":
      norm = s / scores.num_tokens[idxs]
    elif spec.normalization == "char":
      norm = s / np.asarray([max(len(requests[j].continuation), 1) for j in idxs])
    else:
      norm = s
    gold[i] = int(examples[i]["gold"])
    correct[i] = int(np.argmax(norm)) == gold[i]
    gold_lp[i] = s[gold[i]]
    choice_scores.append(norm)
    sums.append(s)
  return Scored(correct, choice_scores, sums, gold, gold_lp, trunc)


def choice_calibration(scored: Scored) -> dict[str, float]:
  """Top-label ECE (15 equal-width bins) and Brier of softmax over summed choice log-probs,
  over the examples with the most common number of choices."""
  sizes = [len(s) for s in scored.choice_logprob_sums]
  m = max(set(sizes), key=sizes.count)
  keep = [i for i, s in enumerate(sizes) if s == m]
  probs = cal.label_probs(np.stack([scored.choice_logprob_sums[i] for i in keep]))
  gold = scored.gold[keep]
  conf, _, correct = cal.top_label(probs, gold)
  return {"ece_15": cal.ece(conf, correct, 15, "width"), "brier": cal.brier(probs, gold)}


def evaluate(lm: checkpoint_loading.LoadedLM, tasks: Sequence[icl_tasks.TaskSpec], *,
             batch_size: int = 32, max_seq_len: int = 1024, seed: int = 1234,
             max_examples: int = 0, mesh=None, rules: Any = None,
             progress_every_s: float = 10.0, max_tokens_per_batch: int = 0,
             min_bucket: int = icl_scoring.MIN_BUCKET
             ) -> tuple[list[TaskResult], dict[tuple[str, int], Scored]]:
  """Scores every (task, k); returns the results and the per-example outcomes."""
  scorer = icl_scoring.SpanScorer(lm.module, lm.params, batch_size=batch_size,
                                  max_seq_len=max_seq_len, bos_id=lm.bos_id, mesh=mesh,
                                  rules=rules, max_tokens_per_batch=max_tokens_per_batch,
                                  min_bucket=min_bucket)
  jobs = []
  for spec in tasks:
    if max_examples:
      spec = dataclasses.replace(spec, max_examples=min(spec.max_examples or max_examples,
                                                        max_examples))
    examples = icl_tasks.read_examples(spec)
    for k in spec.num_fewshot:
      try:
        requests = icl_tasks.build_requests(spec, examples, k, seed)
      except icl_tasks.TaskError as err:
        raise icl_tasks.TaskError(f"task {spec.label!r}: {err}") from None
      jobs.append((spec, examples, k, requests, tokenize_requests(lm.encode, requests)))
  total = sum(len(j[3]) for j in jobs)
  progress = progress_lib.Progress(total, "icl-eval", every_s=progress_every_s, unit="req")
  results, outcomes = [], {}
  for spec, examples, k, requests, pairs in jobs:
    t0 = time.perf_counter()
    scores = scorer.score(pairs, progress=progress)
    seconds = time.perf_counter() - t0
    scored = aggregate(spec, examples, requests, scores)
    baseline = icl_tasks.random_baseline(spec, examples)
    acc = float(scored.correct.mean())
    extra = choice_calibration(scored) if spec.icl_task_type != "language_modeling" else {}
    results.append(TaskResult(
        label=spec.label, icl_task_type=spec.icl_task_type, num_fewshot=k,
        num_examples=len(examples), accuracy=acc, random_baseline=baseline,
        centered_accuracy=icl_tasks.centered_accuracy(acc, baseline),
        mean_logprob=float(scored.gold_logprob.mean()),
        truncated_fraction=float(scored.truncated.mean()), seconds=seconds,
        examples_per_s=len(examples) / max(seconds, 1e-9), **extra))
    outcomes[(spec.label, k)] = scored
    logging.info("%s k=%d: accuracy %.4f centered %.4f (%d examples, %.1f s)", spec.label, k,
                 acc, results[-1].centered_accuracy, len(examples), seconds)
  return results, outcomes


def core_score(results: Sequence[TaskResult]) -> float:
  return float(np.mean([r.centered_accuracy for r in results])) if results else float("nan")


def markdown_table(results: Sequence[TaskResult], title: str) -> str:
  lines = [f"# {title}", "",
           "| task | type | k | n | accuracy | random | centered | mean log p(gold) | ECE(15) | "
           "Brier | truncated | ex/s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  for r in results:
    lines.append(f"| {r.label} | {r.icl_task_type} | {r.num_fewshot} | {r.num_examples} | "
                 f"{r.accuracy:.4f} | {r.random_baseline:.3f} | {r.centered_accuracy:+.4f} | "
                 f"{r.mean_logprob:.3f} | {fmt(r.ece_15)} | {fmt(r.brier)} | "
                 f"{r.truncated_fraction:.2f} | {r.examples_per_s:.1f} |")
  lines += ["", f"**CORE (mean centered accuracy over {len(results)} task/shot entries): "
                f"{core_score(results):+.4f}**", ""]
  return "\n".join(lines)


def resolve_tasks(config: ml_collections.ConfigDict) -> list[icl_tasks.TaskSpec]:
  if config.tasks_file:
    tasks = icl_tasks.load_task_list(os.path.expanduser(config.tasks_file))
  else:
    from tools import make_icl_tasks  # pylint: disable=g-import-not-at-top
    path = make_icl_tasks.build_tasks(os.path.join(os.path.expanduser(config.data_dir),
                                                   "icl_tasks"))
    tasks = icl_tasks.load_task_list(path)
  if config.task_labels:
    wanted = [s.strip() for s in config.task_labels.split(",") if s.strip()]
    known = {t.label for t in tasks}
    missing = [w for w in wanted if w not in known]
    config_lib.require(not missing, "task_labels",
                       f"unknown task(s) {missing}; the task list has {sorted(known)}")
    tasks = [t for t in tasks if t.label in wanted]
  if config.num_fewshot:
    shots = tuple(int(k) for k in str(config.num_fewshot).split(","))
    tasks = [dataclasses.replace(t, num_fewshot=shots) for t in tasks]
  return tasks


def random_lm(config: ml_collections.ConfigDict) -> checkpoint_loading.LoadedLM:
  """A randomly initialised model of `config.model` with the byte vocabulary (a
  smoke test of the pipeline; its CORE is ~0)."""
  from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  model = registry.build(config.model)
  z = np.zeros((1, 2), np.int32)
  params = model.init(jax.random.PRNGKey(int(config.seed)), {"inputs": z, "targets": z,
                                                            "weights": z})
  vocab = lm_data.make_vocabulary("byte")
  return checkpoint_loading.LoadedLM(model.module, params,
                                     lambda t: [int(i) for i in vocab.encode(t)], 0,
                                     f"random init of {config.model.name} (seed {config.seed})")


def validate(config: ml_collections.ConfigDict) -> None:
  config_lib.check_keys(config, default_config())
  req = config_lib.require
  req(bool(config.checkpoint), "checkpoint",
      "give a run's --workdir, hf:<dir> with a Hugging Face checkpoint, or 'random'")
  req(int(config.batch_size) >= 1, "batch_size", "must be >= 1")
  req(int(config.max_seq_len) >= 2, "max_seq_len", "must be >= 2")
  req(int(config.max_examples) >= 0, "max_examples", "must be >= 0 (0: all)")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  validate(config)
  tasks = resolve_tasks(config)
  mesh = mesh_lib.create_mesh(dict(config.mesh.shape))
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  if config.checkpoint == "random":
    lm = random_lm(config)
  else:
    lm = checkpoint_loading.load(config.checkpoint, mesh=mesh, rules=rules)
  logging.info("evaluating %s on %d task(s)", lm.description, len(tasks))
  t0 = time.perf_counter()
  results, _ = evaluate(lm, tasks, batch_size=int(config.batch_size),
                        max_seq_len=int(config.max_seq_len), seed=int(config.fewshot_seed),
                        max_examples=int(config.max_examples), mesh=mesh, rules=rules,
                        progress_every_s=float(config.progress_every_s),
                        max_tokens_per_batch=int(config.max_tokens_per_batch),
                        min_bucket=int(config.min_length_bucket))
  summary = {"checkpoint": lm.description, "core": core_score(results),
             "num_entries": len(results), "seconds": time.perf_counter() - t0,
             "results": [dataclasses.asdict(r) for r in results]}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    files.write_text(os.path.join(workdir, "results.json"), json.dumps(summary, indent=2))
    files.write_text(os.path.join(workdir, "results.md"),
                     markdown_table(results, f"ICL evaluation of {lm.description}"))
  return {k: v for k, v in summary.items() if k != "results"} | {
      "workdir": os.path.abspath(workdir)}
