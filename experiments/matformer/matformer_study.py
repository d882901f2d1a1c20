"""Runner of the MatFormer study (experiments/configs/matformer_small.py).

1. Train the MatFormer LM (`config.lm`, model.name=matformer) through
   `experiments.lm.run`, and, with `study.baselines`, a plain transformer LM
   of each granularity's d_ff with the same steps, batch, seed and schedule
   (the same token budget), in <workdir>/matformer and <workdir>/baseline_ffn{m}.
2. On the first `study.eval_batches` validation batches: the loss of every
   uniform sub-model, of the extracted plain LMs (equal to the sub-models), of
   the baselines and of the Mix'n'Match choices (`matformer_eval.mixnmatch_choices`);
   each Mix'n'Match point's gap to the line through the uniform points.
3. Consistency of each sub-model with the universal model (and of each
   baseline with the largest baseline); speculative decoding of the universal
   model with the smallest sub-model as draft and with the smallest baseline
   as draft (greedy and sampled), against target-only KV-cache decoding.
4. FLOPs (compiled cost analysis) and forward tokens/s per granularity; the
   smallest extracted LM exported as a Hugging Face checkpoint and reloaded.
5. results.json, plots and report.md (`matformer_report`).

A run directory whose summary.json says it finished is not trained again, so
re-running the launch command re-does only the analysis.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines import lm_sources
from experiments import lm
from experiments.configs import matformer_small
from experiments.matformer import matformer_eval as ev
from experiments.matformer import matformer_report
from framework import checkpoint as checkpoint_lib
from framework import config as config_lib
from framework import files
from framework import mesh as mesh_lib
from framework import optim
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from models import matformer as mf
from models import registry
from models import transformer as tr


def default_config() -> ml_collections.ConfigDict:
  return matformer_small.get_config()


def validate(config: ml_collections.ConfigDict) -> mf.MatFormerConfig:
  config_lib.check_keys(config, default_config())
  req = config_lib.require
  req(config.lm.model.name == "matformer", "lm.model.name",
      f"{config.lm.model.name!r} must be 'matformer'")
  lm.validate(config.lm)
  cfg = registry.make_config(config.lm.model)
  s = config.study
  req(int(s.eval_batches) >= 1, "study.eval_batches", "must be >= 1")
  req(int(s.spec_prompts) >= 1 and int(s.spec_prompt_len) >= 1, "study.spec_prompts",
      "spec_prompts and spec_prompt_len must be >= 1")
  req(int(s.spec_prompt_len) < int(config.lm.data.seq_len), "study.spec_prompt_len",
      f"must be shorter than lm.data.seq_len={config.lm.data.seq_len}")
  req(all(int(g) >= 1 for g in s.spec_gammas), "study.spec_gammas", "each gamma must be >= 1")
  return cfg


def baseline_config(lm_config: ml_collections.ConfigDict, cfg: mf.MatFormerConfig,
                    d_ff: int) -> ml_collections.ConfigDict:
  """The LM config of the plain transformer with cfg's shared fields and this d_ff."""
  c = copy.deepcopy(lm_config)
  fields = {k: v for k, v in c.model.to_dict().items()
            if k in {f for f in tr.TransformerConfig.__dataclass_fields__}}
  c.model = ml_collections.ConfigDict(dict(fields, name="transformer", d_ff=int(d_ff)))
  return c


def train(lm_config: ml_collections.ConfigDict, run_dir: str) -> dict[str, Any]:
  """`experiments.lm.run`, unless run_dir already holds the finished run."""
  path = os.path.join(run_dir, "summary.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
    if int(summary.get("final_step", -1)) == int(lm_config.trainer.total_steps):
      logging.info("%s finished before: not trained again", run_dir)
      return summary
  return lm.run(lm_config, run_dir)


def load_params(lm_config: ml_collections.ConfigDict, run_dir: str) -> Any:
  """The params of run_dir's newest checkpoint, on one device."""
  model = registry.build(lm_config.model)
  mesh = mesh_lib.create_mesh({"data": 1}, jax.devices()[:1])
  rules = sharding_lib.normalize_rules(lm_config.sharding.rules)
  total = int(lm_config.trainer.total_steps)
  tx = optim.make_optimizer(lm_config.optimizer, optim.make_schedule(lm_config.schedule, total))
  example = {k: np.zeros((1, int(lm_config.data.seq_len)), np.int32)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
  abstract, shardings = train_state_lib.state_shardings(model, tx, example, mesh, rules,
                                                        int(lm_config.seed))
  ckpt = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), save_every=1,
                                     async_save=False)
  try:
    restored = ckpt.restore_latest(abstract, shardings)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{run_dir}/checkpoints holds no checkpoint")
  return ev.unbox(restored[1].params)


def validation_batches(lm_config: ml_collections.ConfigDict, num: int) -> list[dict]:
  arrays = lm_sources.arrays_from_config(lm_config.data)["validation"]
  gbs = int(lm_config.data.global_batch_size)
  return list(lm.eval_batches_fn(arrays, gbs, num)())


def _hf_roundtrip(workdir: str, cfg: mf.MatFormerConfig, params: Any, m: int,
                  batches: list[dict]) -> dict[str, Any]:
  """Exports the extracted width-m LM, reloads it, compares logits with the sub-model."""
  from framework import hf_checkpoint  # pylint: disable=g-import-not-at-top
  sub, pcfg = mf.extract(params, cfg, m)
  path = os.path.join(workdir, f"hf_ffn{m}")
  hf_checkpoint.save_hf(path, pcfg, sub)
  loaded_cfg, loaded = hf_checkpoint.load_hf(path)
  tokens = batches[0]["inputs"][:2]
  want = mf.MatFormerLM(cfg, granularity=m).apply({"params": params}, tokens)
  got = tr.TransformerLM(loaded_cfg).apply({"params": loaded}, tokens)
  return {"granularity": m, "path": path, "max_abs_logit_diff": float(np.abs(got - want).max())}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  cfg = validate(config)
  s = config.study
  os.makedirs(workdir, exist_ok=True)
  files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  # 1. Training.
  mat_dir = os.path.join(workdir, "matformer")
  summaries = {"matformer": train(config.lm, mat_dir)}
  base_cfgs = {}
  if s.baselines:
    for m in cfg.granularities:
      base_cfgs[m] = baseline_config(config.lm, cfg, m)
      summaries[f"baseline_ffn{m}"] = train(base_cfgs[m], os.path.join(workdir,
                                                                         f"baseline_ffn{m}"))
  params = load_params(config.lm, mat_dir)
  base_params = {m: load_params(c, os.path.join(workdir, f"baseline_ffn{m}"))
                 for m, c in base_cfgs.items()}
  batches = validation_batches(config.lm, int(s.eval_batches))
  if not batches:
    raise config_lib.ConfigError("config.lm.data: the validation split holds less than one "
                                 "global batch; nothing to evaluate")
  results: dict[str, Any] = {"variant": config.variant, "smoke": bool(config.smoke),
                             "steps": int(config.lm.trainer.total_steps),
                             "tokens_per_step": int(config.lm.data.global_batch_size) *
                             int(config.lm.data.seq_len),
                             "eval_tokens": 0.0, "model": {
                                 k: getattr(cfg, k) for k in (
                                     "d_model", "num_layers", "num_heads", "num_kv_heads",
                                     "head_dim", "d_ff", "vocab_size", "mode", "interleave")},
                             "granularities": list(cfg.granularities)}
  results["train_summaries"] = {k: {"eval_loss": v.get("eval_loss"),
                                    "train_loss": v.get("train_loss"),
                                    "tokens_per_s": v.get("tokens_per_s")}
                                for k, v in summaries.items()}

  # 2. Held-out losses: uniform sub-models, extracted LMs, baselines, Mix'n'Match.
  uniform = []
  for m in cfg.granularities:
    sub = ev.eval_loss(mf.MatFormerLM(cfg, granularity=m), params, batches)
    plain_params, pcfg = mf.extract(params, cfg, m)
    plain = ev.eval_loss(tr.TransformerLM(pcfg), plain_params, batches)
    row = {"granularity": m, "params": mf.count_params(cfg, m)["total"],
           "non_embedding": mf.count_params(cfg, m)["non_embedding"],
           "loss": sub["loss"], "accuracy": sub["accuracy"], "extracted_loss": plain["loss"]}
    if m in base_params:
      base = ev.eval_loss(tr.TransformerLM(registry.make_config(base_cfgs[m].model)),
                          base_params[m], batches)
      row.update(baseline_loss=base["loss"], baseline_accuracy=base["accuracy"])
    uniform.append(row)
    results["eval_tokens"] = sub["tokens"]
  results["uniform"] = uniform
  line = [(r["non_embedding"], r["loss"]) for r in uniform]
  mix = []
  for choice in ev.mixnmatch_choices(cfg, int(s.mixnmatch_configs), int(s.mixnmatch_seed)):
    if len(set(choice)) == 1:
      continue
    out = ev.eval_loss(mf.MatFormerLM(cfg, granularity=choice), params, batches)
    n = mf.count_params(cfg, choice)["non_embedding"]
    mix.append({"widths": list(choice), "non_embedding": n,
                "params": mf.count_params(cfg, choice)["total"], "loss": out["loss"],
                "gap_to_uniform_line": ev.below_uniform_line(n, out["loss"], line)})
  results["mixnmatch"] = mix

  # 3. Consistency and speculative decoding.
  universal = mf.MatFormerLM(cfg)
  results["consistency"] = []
  for m in cfg.granularities[:-1]:
    row = {"granularity": m, "matformer": ev.consistency(mf.MatFormerLM(cfg, granularity=m),
                                                         params, universal, params, batches)}
    if base_params:
      big = cfg.granularities[-1]
      row["baseline"] = ev.consistency(
          tr.TransformerLM(registry.make_config(base_cfgs[m].model)), base_params[m],
          tr.TransformerLM(registry.make_config(base_cfgs[big].model)), base_params[big],
          batches)
    results["consistency"].append(row)

  plen = int(s.spec_prompt_len)
  prompts = [list(map(int, row[:plen])) for row in
             np.concatenate([b["inputs"] for b in batches])[:int(s.spec_prompts)]]
  smallest = cfg.granularities[0]
  drafts = {f"matformer_ffn{smallest}": (mf.MatFormerLM(cfg, granularity=smallest), params)}
  if smallest in base_params:
    drafts[f"baseline_ffn{smallest}"] = (
        tr.TransformerLM(registry.make_config(base_cfgs[smallest].model)), base_params[smallest])
  results["speculative"] = []
  for name, (draft, dparams) in drafts.items():
    for gamma in s.spec_gammas:
      for temperature in (0.0, float(s.spec_temperature)):
        row = ev.speculative_run(universal, params, draft, dparams, prompts,
                                 new_tokens=int(s.spec_new_tokens), gamma=int(gamma),
                                 temperature=temperature, repeats=int(s.spec_repeats))
        row["draft"] = name
        results["speculative"].append(row)
        logging.info("speculative %s: %s", name, row)

  # 4. FLOPs / speed per granularity; HF export of the smallest extracted LM.
  results["benchmark"] = ev.granularity_benchmark(cfg, params, int(s.bench_batch),
                                                  int(config.lm.data.seq_len),
                                                  int(s.bench_repeats))
  if s.hf_export:
    results["hf_export"] = _hf_roundtrip(workdir, cfg, params, smallest, batches)

  # 5. Report.
  files.write_text(os.path.join(workdir, "results.json"),
                   json.dumps(results, indent=2, default=float))
  matformer_report.write(workdir, results)
  summary = {
      "losses": {r["granularity"]: round(r["loss"], 4) for r in uniform},
      "baseline_losses": {r["granularity"]: round(r["baseline_loss"], 4)
                          for r in uniform if "baseline_loss" in r},
      "mixnmatch_below_line": sum(r["gap_to_uniform_line"] <= 0 for r in mix),
      "mixnmatch_points": len(mix),
      "report": os.path.join(workdir, "report.md"),
  }
  files.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary
