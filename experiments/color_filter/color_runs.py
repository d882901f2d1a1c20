"""LM runs of the CoLoR-Filter study: training through the LM runner, and
loading a finished run's parameters.

Training goes through `experiments.lm.run` (the runner `experiments.launch`
calls), so every model here is an ordinary LM run directory (config.json,
checkpoints/, metrics.jsonl, report.md). A fine-tune from another run
(the conditional model from the prior) passes `init_state` to the trainer:
a fresh state whose parameters are replaced by the other run's newest
checkpoint (optimizer state and step start fresh), no change to the runner.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from experiments import lm
from framework import checkpoint as checkpoint_lib
from framework import mesh as mesh_lib
from framework import optim
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from models import registry


def read_run_config(run_dir: str) -> ml_collections.ConfigDict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} is not an LM run directory (no config.json)")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def example_batch(config: Any) -> dict[str, np.ndarray]:
  shape = (int(config.data.global_batch_size), int(config.data.seq_len))
  return {k: np.zeros(shape, np.int32)
          for k in ("inputs", "targets", "weights", "segment_ids", "positions")}


def load_run_params(run_dir: str, mesh=None, step: Optional[int] = None
                    ) -> tuple[ml_collections.ConfigDict, Any, Any, int]:
  """(config, model, params, step) of a run's newest checkpoint that verifies
  (or of checkpoint `step`), with params placed by the run's sharding rules
  on `mesh` (default: all devices on the data axis)."""
  config = read_run_config(run_dir)
  model = registry.build(config.model)
  mesh = mesh if mesh is not None else mesh_lib.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  total = int(config.trainer.total_steps)
  tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, total))
  abstract, shardings = train_state_lib.state_shardings(model, tx, example_batch(config), mesh,
                                                        rules, seed=int(config.seed))
  ckpt = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"),
                                     save_every=int(config.checkpoint.every),
                                     keep=int(config.checkpoint.keep), async_save=False)
  try:
    if step is None:
      restored = ckpt.restore_latest(abstract, shardings)
    elif int(step) in ckpt.steps():
      restored = (int(step),) + tuple(ckpt.restore(int(step), abstract, shardings))
    else:
      raise FileNotFoundError(f"{run_dir}/checkpoints has no step {step} (steps {ckpt.steps()})")
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{run_dir}/checkpoints holds no checkpoint")
  step, state, _ = restored
  return config, model, state.params, int(step)


def params_fingerprint(params: Any) -> str:
  """A short digest of the parameters (the checkpoint fingerprints F1, F2)."""
  sums = checkpoint_lib.fingerprints(params)
  return hashlib.sha1(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:16]


def init_from_run(run_dir: str):
  """`init_state` for the trainer: the fresh state with `run_dir`'s params."""

  def init_state(state):
    _, _, params, step = load_run_params(run_dir)
    got = jax.tree.structure(params)
    want = jax.tree.structure(state.params)
    if got != want:
      raise ValueError(f"init from {run_dir}: its parameters do not match the model's "
                       f"({got} vs {want})")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params),
                            jax.tree.leaves(params)):
      if a.shape != b.shape:
        raise ValueError(f"init from {run_dir} (step {step}): parameter "
                         f"{jax.tree_util.keystr(path)} has shape {b.shape}, the model {a.shape}")
    return state.replace(params=params)
  return init_state


def train_lm(config: ml_collections.ConfigDict, run_dir: str,
             init_from: Optional[str] = None) -> dict:
  """`experiments.lm.run` (the launch path), optionally initialised from
  another run's newest checkpoint. A finished run (summary.json with
  final_step = total_steps) is not run again."""
  summary_path = os.path.join(run_dir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)
    if int(summary.get("final_step", -1)) == int(config.trainer.total_steps):
      return summary
  kwargs = {"init_state": init_from_run(init_from)} if init_from else {}
  return lm.run(config, run_dir, **kwargs)
