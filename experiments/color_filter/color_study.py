"""Runner: the CoLoR-Filter study end to end (experiments/configs/color_filter.py).

  pool        data_pipelines.color_filter.pool_build (or config.pool.dir)
  prior       LM on the pool (data.source=curated over pool/output/*.jsonl.zst)
  conditional the prior fine-tuned on the target set (init from the prior's
              newest checkpoint; eval on the held-out target documents)
  scores      per-document mean token loss of every pool document under both
              (color_scoring.score_to_store: resumable stores in scores/)
  fastText    target-vs-pool classifier probabilities (fasttext/)
  selections  for each method and tau: selections/<method>_tau<tau>/
  targets     for each selection and seed, an LM trained for the same number of
              steps (= tokens) on it, evaluated on the held-out target
              documents during training (eval/loss); the random baseline is the
              whole pool (tau = 1), trained `random_steps_factor` times longer so
              that its curve also gives the data-efficiency factor
  evaluation  each target model's final loss per held-out domain
  report      color_report: curves and report.md

Every stage skips work a previous run of the same workdir finished (finished
LM runs, complete score stores, written selections and evaluations), so a
killed study resumes.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from data_pipelines.color_filter import domain_classifier
from data_pipelines.color_filter import pool_build
from data_pipelines.color_filter import score_store
from data_pipelines.color_filter import selection as sel
from data_pipelines.curation import io as cio
from experiments.color_filter import color_report
from experiments.color_filter import color_runs
from experiments.color_filter import color_scoring
from experiments.configs import color_filter as color_config
from framework import config as config_lib
from framework import files


def default_config() -> ml_collections.ConfigDict:
  return color_config.get_config()


def log(msg: str) -> None:
  logging.info("%s", msg)
  print(f"[color] {msg}", flush=True)


def validate(config: ml_collections.ConfigDict) -> None:
  req = config_lib.require
  req(len(config.selection.taus) > 0 and all(float(t) >= 1 for t in config.selection.taus),
      "selection.taus", f"{list(config.selection.taus)}: each tau must be >= 1")
  bad = [m for m in config.selection.methods if m not in sel.METHODS]
  req(not bad, "selection.methods", f"unknown {bad}; known {list(sel.METHODS)}")
  req(config.selection.mode in sel.MODES, "selection.mode",
      f"{config.selection.mode!r} must be one of {list(sel.MODES)}")
  req(config.selection.runner in ("inprocess", "beam"), "selection.runner",
      f"{config.selection.runner!r} must be 'inprocess' or 'beam'")
  req(len(config.targets.seeds) > 0, "targets.seeds", "needs at least one seed")
  req(int(config.targets.random_steps_factor) >= 1, "targets.random_steps_factor", "must be >= 1")
  req(config.lm.data.vocab == "byte", "lm.data.vocab",
      "the study scores documents with the byte vocabulary; other vocabularies are not wired")


# ----------------------------------------------------------------------------
# Stages.

def ensure_pool(config, workdir: str) -> str:
  pc = config.pool
  pool_dir = pc.dir or os.path.join(workdir, "pool")
  if os.path.exists(os.path.join(pool_dir, "manifest.json")):
    return pool_dir
  if pc.dir:
    raise FileNotFoundError(f"config.pool.dir={pc.dir!r}: no manifest.json (build it with "
                            "python -m tools.build_color_pool)")
  roots, sources = pool_build.resolve_roots(list(pc.domains), pc.root, pc.apt_cache,
                                            os.path.join(workdir, "_debs"))
  pool_build.build_pool(roots, pool_dir, target_domain=pc.target_domain,
                        docs_per_domain=int(pc.docs_per_domain), min_chars=int(pc.min_chars),
                        max_chars=int(pc.max_chars), target_fraction=float(pc.target_fraction),
                        heldout_fraction=float(pc.heldout_fraction),
                        num_shards=int(pc.num_shards), seed=int(pc.seed), sources=sources, log=log)
  return pool_dir


def lm_config(config, workdir: str, *, seed: int, total_steps: int, peak_lr: float,
              warmup: int, schedule: str, eval_every: int) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config.lm)
  c.seed = int(seed)
  c.data.data_dir = os.path.join(workdir, "data")
  c.trainer.total_steps = int(total_steps)
  c.trainer.eval_every = int(eval_every)
  c.schedule.name = schedule
  c.schedule.peak_lr = float(peak_lr)
  c.schedule.warmup_steps = int(warmup)
  c.checkpoint.every = int(total_steps)
  c.checkpoint.keep = 1
  return c


def train_prior(config, workdir: str, pool_dir: str) -> str:
  p = config.prior
  c = lm_config(config, workdir, seed=config.lm.seed, total_steps=p.total_steps,
                peak_lr=p.peak_lr, warmup=p.warmup_steps, schedule="warmup_cosine",
                eval_every=p.total_steps)
  c.data.source = "curated"
  c.data.curated_dir = os.path.join(pool_dir, "pool")
  c.data.curated_validation_fraction = float(p.validation_fraction)
  run_dir = os.path.join(workdir, "prior")
  log(f"prior: {p.total_steps} steps on the pool -> {run_dir}")
  color_runs.train_lm(c, run_dir)
  return run_dir


def train_conditional(config, workdir: str, pool_dir: str, prior_dir: str) -> str:
  p = config.conditional
  c = lm_config(config, workdir, seed=config.lm.seed, total_steps=p.total_steps,
                peak_lr=p.peak_lr, warmup=p.warmup_steps, schedule="warmup_cosine",
                eval_every=p.total_steps)
  c.data.source = "files"
  c.data.train_path = os.path.join(pool_dir, "target.jsonl")
  c.data.validation_path = os.path.join(pool_dir, "heldout_target.jsonl")
  run_dir = os.path.join(workdir, "conditional")
  log(f"conditional: {p.total_steps} steps on the target set from the prior -> {run_dir}")
  color_runs.train_lm(c, run_dir, init_from=prior_dir)
  return run_dir


def make_scorer(config, run_dir: str, step: Optional[int] = None
                ) -> tuple[color_scoring.Scorer, str]:
  run_config, model, params, step = color_runs.load_run_params(run_dir, step=step)
  scorer = color_scoring.Scorer(model, params, seq_len=int(run_config.data.seq_len),
                                batch_rows=int(config.scoring.batch_rows))
  return scorer, f"{os.path.abspath(run_dir)}@{step}:{color_runs.params_fingerprint(params)}"


def score_pool(config, workdir: str, pool_rows: list[dict], run_dir: str, name: str) -> dict:
  store_dir = os.path.join(workdir, "scores", name)
  try:
    store = score_store.ScoreStore.open(store_dir)
    return store.as_dict("loss")
  except (FileNotFoundError, score_store.ScoreStoreError):
    pass
  scorer, fingerprint = make_scorer(config, run_dir)
  stats = color_scoring.score_to_store(
      scorer, [r["id"] for r in pool_rows], [r["text"] for r in pool_rows], store_dir,
      fingerprint=fingerprint, block_size=int(config.scoring.block_size), desc=f"score {name}",
      print_fn=log)
  files.write_text(os.path.join(store_dir, "throughput.json"), json.dumps(stats, indent=1))
  log(f"scores {name}: {stats['docs']} docs in {stats['seconds']:.1f} s "
      f"({stats['docs_per_s']:.1f} docs/s, {stats['tokens_per_s']:.0f} tokens/s)")
  return score_store.ScoreStore.open(store_dir).as_dict("loss")


def fasttext_probs(config, workdir: str, pool_dir: str, pool_rows: list[dict]) -> dict:
  path = os.path.join(workdir, "fasttext", "target_prob.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  target_rows = pool_build.read_split(pool_dir, "target")
  f = config.fasttext
  model = domain_classifier.train_domain_classifier(
      target_rows, pool_rows, os.path.join(workdir, "fasttext"), seed=int(f.seed), dim=int(f.dim),
      epoch=int(f.epoch), lr=float(f.lr), word_ngrams=int(f.word_ngrams))
  probs = domain_classifier.target_probabilities(model, pool_rows)
  files.write_text(path, json.dumps(probs, sort_keys=True))
  return probs


def selection_name(method: str, tau: float) -> str:
  return f"{method}_tau{float(tau):g}"


def run_selections(config, workdir: str, pool_dir: str, pool_rows: list[dict],
                   inputs: dict[str, dict]) -> dict[str, dict]:
  shards = cio.output_shards(os.path.join(pool_dir, "pool"))
  ids = [r["id"] for r in pool_rows]
  out = {}
  for method in config.selection.methods:
    scores = sel.method_scores(method, ids, prior_loss=inputs.get("prior"),
                               cond_loss=inputs.get("cond"), target_prob=inputs.get("fasttext"),
                               seed=int(config.selection.random_seed))
    for tau in config.selection.taus:
      name = selection_name(method, tau)
      out_dir = os.path.join(workdir, "selections", name)
      summary_path = os.path.join(out_dir, sel.SUMMARY)
      jsonl = os.path.join(out_dir, "selected.jsonl")
      if not (os.path.exists(summary_path) and os.path.exists(jsonl)):
        kw = dict(tau=float(tau), method=method, mode=config.selection.mode,
                  num_output_shards=int(config.selection.num_output_shards))
        if config.selection.runner == "beam":
          from data_pipelines.color_filter import selection_beam  # pylint: disable=g-import-not-at-top
          selection_beam.select_beam(shards, scores, out_dir, **kw)
        else:
          sel.select(shards, scores, out_dir, **kw)
        sel.write_selection_jsonl(out_dir, jsonl)
      with open(summary_path, encoding="utf-8") as f:
        out[name] = json.load(f)
      log(f"selection {name}: {out[name]['num_selected']} of {out[name]['num_candidates']}, "
          f"domains {out[name]['domains']}")
  return out


def train_targets(config, workdir: str, pool_dir: str, selections: dict) -> dict[str, dict]:
  """{run name: {"method", "tau", "seed", "dir", "steps"}} of every target model."""
  t = config.targets
  runs = {}
  plan = [(name, s["method"], float(s["tau"]),
           os.path.join(workdir, "selections", name, "selected.jsonl"), int(t.total_steps))
          for name, s in sorted(selections.items())]
  plan.append(("random_tau1", "random", 1.0, os.path.join(pool_dir, "pool.jsonl"),
               int(t.total_steps) * int(t.random_steps_factor)))
  for name, method, tau, train_path, steps in plan:
    for seed in t.seeds:
      c = lm_config(config, workdir, seed=int(seed), total_steps=steps, peak_lr=t.peak_lr,
                    warmup=t.warmup_steps, schedule="constant", eval_every=t.eval_every)
      c.data.source = "files"
      c.data.train_path = train_path
      c.data.validation_path = os.path.join(pool_dir, "heldout_target.jsonl")
      if steps > int(t.total_steps):   # random: also keep the checkpoint at equal tokens
        c.checkpoint.every = int(t.total_steps)
        c.checkpoint.keep = steps // int(t.total_steps) + 1
      run_name = f"{name}_seed{seed}"
      run_dir = os.path.join(workdir, "targets", run_name)
      log(f"target model {run_name}: {steps} steps")
      color_runs.train_lm(c, run_dir)
      runs[run_name] = {"selection": name, "method": method, "tau": tau, "seed": int(seed),
                        "dir": run_dir, "steps": steps, "eval_step": int(t.total_steps)}
  return runs


def evaluate_runs(config, runs: dict, heldout_rows: list[dict]) -> dict[str, dict]:
  """{run: {domain: held-out loss (token-weighted nats/byte)}} of each run's
  checkpoint at `eval_step` (equal tokens; default its newest)."""
  out = {}
  for run_name, r in sorted(runs.items()):
    step = r.get("eval_step")
    path = os.path.join(r["dir"], f"heldout_eval_step{step}.json" if step else "heldout_eval.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        out[run_name] = json.load(f)
      continue
    scorer, _ = make_scorer(config, r["dir"], step=step)
    s = scorer.score_texts([d["text"] for d in heldout_rows])
    per = {}
    for dom in sorted({d["domain"] for d in heldout_rows}):
      idx = np.asarray([i for i, d in enumerate(heldout_rows) if d["domain"] == dom])
      per[dom] = float(s["nll_sum"][idx].sum() / s["tokens"][idx].sum())
    files.write_text(path, json.dumps(per, indent=1, sort_keys=True))
    out[run_name] = per
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  pool_dir = ensure_pool(config, workdir)
  pool_rows = pool_build.read_split(pool_dir, "pool")
  heldout_rows = pool_build.read_split(pool_dir, "heldout")
  prior_dir = train_prior(config, workdir, pool_dir)
  cond_dir = train_conditional(config, workdir, pool_dir, prior_dir)
  inputs = {"prior": score_pool(config, workdir, pool_rows, prior_dir, "prior"),
            "cond": score_pool(config, workdir, pool_rows, cond_dir, "cond")}
  if "fasttext" in config.selection.methods:
    inputs["fasttext"] = fasttext_probs(config, workdir, pool_dir, pool_rows)
  selections = run_selections(config, workdir, pool_dir, pool_rows, inputs)
  runs = train_targets(config, workdir, pool_dir, selections)
  evals = evaluate_runs(config, runs, heldout_rows)
  base_evals = evaluate_runs(config, {"prior": {"dir": prior_dir},
                                      "conditional": {"dir": cond_dir}}, heldout_rows)
  summary = color_report.write_report(config, workdir, pool_dir=pool_dir, runs=runs,
                                      evals=evals, selections=selections, pool_rows=pool_rows,
                                      inputs=inputs, base_evals=base_evals)
  files.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary
