"""Runner: margin maximisation on algebraic tasks (Morwani et al., ICLR 2024).

`run(config, workdir) -> dict` trains the paper's one-hidden-layer bias-free
networks (`models.algebraic_nets`, from config.model) on a complete algebraic
dataset (modular addition, sparse parity or finite-group composition) with

    L_t(theta) = mean_{(x,y)} CE(f(theta; x), y) + lambda_t ||theta||_{2,nu}^nu

(or log L_t), lambda_t annealed geometrically (the model's objective; small
regularisation drives the normalised margin to its maximum as lambda -> 0).
Training is the framework's: `framework.trainer.train` with the optimizer of
`framework.optim.make_optimizer` (config.optimizer / config.schedule), the
full batch reused every step (data.batch_size = 0) or minibatches of a
resumable `BatchIterator`, `trainer.steps_per_call` steps per dispatch. The
normalised margin as a fraction of the theoretical maximum is measured by a
loop hook (`margin_probe.MarginProbe`); after training the feature statistics
(`features.analyze`), margin-vs-step and feature plots and `report.md`
(`margin_report`) go into workdir with `summary.json` and `params.npz`.

Configs: `experiments/margins/margins_config.py` (variants p11, p71, s3, s4,
parity_10_4).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any, Dict

import jax
import ml_collections
import numpy as np

from data_pipelines import batching
from experiments.margins import features
from experiments.margins import margin_probe
from experiments.margins import margin_report
from experiments.margins import margins_config
from framework import config as config_lib
from framework import mesh as mesh_lib
from framework import metrics as metrics_lib
from framework import trainer
from models import algebraic_nets

FEATURE_FIGURES = {"modular_addition": "fourier.png", "parity": "parity_support.png",
                   "group": "irreps.png"}


def default_config() -> ml_collections.ConfigDict:
  """The schema of margins configs (the default variant, p11)."""
  return margins_config.get_config()


def trainer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config with trainer.full_batch set from data.batch_size (0: full batch)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.trainer.full_batch = not config.data.batch_size
  return out


def check_task(config: ml_collections.ConfigDict) -> None:
  """Rejects tasks the theory has no max margin for, naming the field.

  `margins.max_margin_modular_addition` is the odd-p value
  sqrt(2/27) / (sqrt(p) (p - 1)); for even p the cyclic group has the real
  one-dimensional irrep a -> (-1)^a as well and that formula is not the
  maximum (p = 16 trained to 1.016 of it), so even p is refused for the
  polynomial nets whose margin is reported as a fraction of the max.
  """
  if (config.data.task == "modular_addition"
      and config.model.get("activation") in algebraic_nets.POLYNOMIAL):
    p = int(config.data.p)
    config_lib.require(p % 2 == 1, "data.p",
                       f"{p} is even; the max-margin theory used here "
                       "(sqrt(2/27) / (sqrt(p) (p - 1))) holds for odd p only")


def validate(config: ml_collections.ConfigDict, num_examples: int, mesh=None) -> None:
  """Fails fast, naming the field, before anything compiles."""
  req = config_lib.require
  check_task(config)
  tc, mc = config.trainer, config.measure
  k = int(tc.steps_per_call)
  req(tc.total_steps > 0, "trainer.total_steps", "must be positive")
  req(k >= 1 and tc.total_steps % k == 0, "trainer.steps_per_call",
      f"{k} must divide trainer.total_steps={tc.total_steps}")
  for field in ("every", "early_every"):
    req(mc[field] >= k and mc[field] % k == 0, f"measure.{field}",
        f"{mc[field]} must be a multiple of trainer.steps_per_call={k}")
  req(tc.log_every % k == 0, "trainer.log_every",
      f"{tc.log_every} must be a multiple of trainer.steps_per_call={k}")
  bs = int(config.data.batch_size)
  req(0 <= bs <= num_examples, "data.batch_size",
      f"{bs} must be 0 (full batch) or at most the {num_examples} examples")
  if mesh is None:
    try:
      sizes = mesh_lib.resolve_mesh_shape(dict(config.mesh.shape), jax.device_count())
    except mesh_lib.MeshError as err:
      raise config_lib.ConfigError(str(err)) from None
    shards = sizes["data"] * sizes["fsdp"]
  else:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
  req((bs or num_examples) % shards == 0, "data.batch_size",
      f"the batch ({bs or num_examples} examples) must split over the data x fsdp "
      f"mesh axes ({shards} devices); use mesh.shape.tensor for the devices")
  req(config.model.schedule_steps == tc.total_steps, "model.schedule_steps",
      f"{config.model.schedule_steps} must equal trainer.total_steps={tc.total_steps} "
      "(the lambda schedule spans the run)")


def will_resume(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Whether the trainer will find a finished checkpoint to resume from."""
  if not config.checkpoint.enabled:
    return False
  directory = os.path.join(workdir, "checkpoints")
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return False
  return any(n.isdigit() and os.path.isdir(os.path.join(directory, n)) for n in names)


def start_fresh_metrics(workdir: str) -> None:
  """A run that starts at step 0 starts a fresh metrics.jsonl (and TensorBoard
  log): re-running a workdir must not append a second copy of every step.
  A resumed run keeps them; the trainer drops the records it will redo."""
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    os.remove(path)
  shutil.rmtree(os.path.join(workdir, "tb"), ignore_errors=True)


def train_and_probe(config: ml_collections.ConfigDict, task: features.Task, workdir: str,
                    writer: metrics_lib.MetricWriter | None = None, **train_kwargs):
  """Trains through the framework; returns (params, probe history, seconds, result).

  `train_kwargs` go to `framework.trainer.train` (e.g. `mesh=`).
  """
  ds = task.dataset
  arrays = {"inputs": ds.inputs, "labels": ds.labels}
  bs = int(config.data.batch_size) or len(ds.labels)
  train_iter = batching.BatchIterator(arrays, bs, seed=int(config.seed),
                                      shuffle=bool(config.data.batch_size))
  probe = margin_probe.MarginProbe(
      task.model, ds.inputs, ds.labels, task.max_margin, every=int(config.measure.every),
      early_every=int(config.measure.early_every),
      early_steps=int(config.measure.early_steps),
      total_steps=int(config.trainer.total_steps), writer=writer)
  t0 = time.perf_counter()
  result = trainer.train(trainer_config(config), task.model, train_iter, workdir=workdir,
                         hooks=[(probe, int(config.trainer.steps_per_call))],
                         writer=writer, **train_kwargs)
  seconds = time.perf_counter() - t0
  history = probe.history
  if result.resumed_from is not None:
    earlier = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    history = margin_probe.history_from_records(earlier, result.resumed_from) + history
  if not history or history[-1]["step"] != result.final_step:
    history.append(probe.measure(result.final_step, result.state.params))
  params = jax.device_get(result.state.params)
  return params, history, seconds, result


def run(config: ml_collections.ConfigDict, workdir: str, **train_kwargs) -> Dict[str, Any]:
  """Train, analyse, plot, report. Returns the final summary figures.

  `train_kwargs` go to `framework.trainer.train` (e.g. `mesh=` a mesh of
  some of the devices).
  """
  config_lib.check_keys(config, default_config())
  check_task(config)
  task = features.build_task(config)
  validate(config, len(task.dataset.labels), train_kwargs.get("mesh"))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))
  if jax.process_index() == 0 and not will_resume(config, workdir):
    start_fresh_metrics(workdir)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  try:
    params, history, seconds, result = train_and_probe(config, task, workdir, writer,
                                                       **train_kwargs)
    stats = features.analyze(task, params, float(config.analysis.active_fraction))
    final = history[-1]
    summary = {
        "normalized_margin": final["normalized_margin"],
        "max_margin": task.max_margin,
        "margin_fraction": final.get("margin_fraction"),
        "accuracy": final["accuracy"],
        "loss": final["ce"],
        "train_seconds": seconds,
        "final_step": result.final_step,
    }
    summary.update({k: v for k, v in stats.items() if not k.startswith("_")})
    writer.write(result.final_step, {
        f"final/{k}": v for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        and not (isinstance(v, float) and math.isnan(v))})
  finally:
    writer.close()
  if jax.process_index() == 0:
    figures = {"margin": "margin_vs_step.png", "features": FEATURE_FIGURES[task.kind]}
    margin_report.plot_margin(history, task, os.path.join(workdir, figures["margin"]))
    margin_report.plot_features(task, params, stats,
                                os.path.join(workdir, figures["features"]))
    margin_report.write_report(config, task, history, stats, seconds,
                               os.path.join(workdir, "report.md"), figures)
    np.savez(os.path.join(workdir, "params.npz"),
             **{k: np.asarray(v) for k, v in params.items()})
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1, default=float)
  return summary
