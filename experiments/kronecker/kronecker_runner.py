"""Runner: how Kronecker-factored is each layer's curvature during training?

Laptop-scale reproduction of Morwani, Shapira, Vyas, Malach, Kakade, Janson
(2024), "A New Perspective on Shampoo's Preconditioner", Figure 1 and the
practical-shortcut experiments. `run(config, workdir) -> dict` trains a
registered model (`model.name=mlp|cnn` on sklearn's 8x8 digits, or
`transformer`, a byte-level LM on the pydoc corpus; `kronecker_data`) with
`framework.trainer.train`, and the hook `measurements.KroneckerMeasurements`
measures, at `study.measure_steps`, how well Shampoo^2, Shampoo, K-FAC and
k-step power iterations approximate the optimal Kronecker approximation of
every tapped layer's gradient covariance in the Gauss-Newton and the Adagrad
view, and how well factors from mini-batch gradients do (shortcuts).

Writes into the run directory: metrics.jsonl (the trainer's train/* and the
study's keys gn/<layer>/<metric>, adagrad/<layer>/<metric>,
shortcut/<layer>/<labels>/b<B>/<metric>, eval/*), kronecker_metrics.json
(everything, nested), figure1.png, shortcuts.png, report.md and summary.json
(`kronecker_report`).

  python -m experiments.launch --config=experiments/kronecker/kronecker_config.py:tiny \
      --workdir=/tmp/kron_tiny
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, Tuple

import jax
import ml_collections
import numpy as np

from data_pipelines import batching
from experiments.kronecker import kronecker_config as study_config
from experiments.kronecker import kronecker_data
from experiments.kronecker import kronecker_report
from experiments.kronecker import measurements
from framework import config as config_lib
from framework import mesh as mesh_lib
from framework import metrics as metrics_lib
from framework import trainer
from models import registry

write_outputs = kronecker_report.write_outputs
rebuild_outputs = kronecker_report.rebuild_outputs


def default_config() -> ml_collections.ConfigDict:
  """The schema of the study's configs: the default (mlp) variant's keys."""
  return study_config.get_config()


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the field, before any data is read or anything compiles.

  The schema has no trainer.steps_per_call / full_batch: the hook stores the
  gradient of every mini-batch step, so those keys are rejected as unknown.
  """
  config_lib.check_keys(config, default_config())
  req = config_lib.require
  try:
    registry.make_config(config.model)
  except (TypeError, ValueError) as err:
    raise config_lib.ConfigError(str(err)) from None
  sc = config.study
  req(config.data.name in kronecker_data.NAMES, "data.name",
      f"{config.data.name!r} must be one of {kronecker_data.NAMES}")
  req(int(config.trainer.total_steps) > 0, "trainer.total_steps", "must be positive")
  req(not config.checkpoint.enabled, "checkpoint.enabled",
      "must be False: the study's stored gradients are not checkpointed")
  req(sc.gn_labels in ("sampled", "exact"), "study.gn_labels",
      f"{sc.gn_labels!r} must be 'sampled' or 'exact'")
  req(sc.gn_inputs in ("uniform", "fisher_trace"), "study.gn_inputs",
      f"{sc.gn_inputs!r} must be 'uniform' or 'fisher_trace'")
  req(int(sc.adagrad_every) >= 1, "study.adagrad_every", "must be >= 1")
  req(int(sc.num_examples) >= 4, "study.num_examples", "must be >= 4 (two halves of >= 2)")
  shape = dict(config.mesh.shape)
  req(all(int(v) >= 1 for v in shape.values()), "mesh.shape",
      f"{shape}: the study names its device count (no -1)")


def _mesh(config):
  """A mesh over the first prod(mesh.shape) devices (default: one device)."""
  shape = {k: int(v) for k, v in dict(config.mesh.shape).items()}
  return mesh_lib.create_mesh(shape, jax.devices()[:math.prod(shape.values())])


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains, measures and writes the outputs; returns the summary."""
  return run_study(config, workdir)[1]


def run_study(config: ml_collections.ConfigDict, workdir: str
              ) -> Tuple[measurements.KroneckerMeasurements, Dict[str, Any]]:
  """`run`, also returning the measurement hook (results, stored gradients)."""
  validate(config)
  t_start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  data = kronecker_data.build_data(config.data, int(config.seed))
  train_iter = batching.BatchIterator(data.train, int(config.data.batch_size),
                                      seed=int(config.seed))
  model = registry.build(config.model)
  # One writer: the trainer's train/* and the study's metrics share
  # metrics.jsonl and the TensorBoard run.
  writer = metrics_lib.MetricWriter(workdir)
  hook = measurements.KroneckerMeasurements(
      config, model, data, train_iter, writer,
      on_measured=lambda step: write_metrics_json(workdir, hook, _timings(hook, t_start),
                                                  partial=True))
  try:
    trainer.train(config, model, train_iter, workdir=workdir, mesh=_mesh(config),
                  hooks=[(hook, 1)], init_state=hook.start, writer=writer)
  finally:
    writer.close()
  timings = _timings(hook, t_start)
  write_metrics_json(workdir, hook, timings, partial=False)
  return hook, write_outputs(workdir, config, hook.results, hook.layers, timings,
                             hook.train_log)


def _timings(hook, t_start: float) -> Dict[str, Any]:
  total = time.perf_counter() - t_start
  return {"total_s": total, "measure_s": hook.measure_s, "train_s": total - hook.measure_s,
          "load": " ".join(f"{v:.2f}" for v in os.getloadavg())}


def write_metrics_json(workdir: str, hook, timings: Dict[str, Any], *, partial: bool) -> None:
  """kronecker_metrics.json with the steps measured so far (atomically replaced).

  Rewritten after every measured step (`partial: true`, so a long run that is
  stopped keeps what it measured) and once at the end (`partial: false`).
  """
  path = os.path.join(workdir, "kronecker_metrics.json")
  with open(path + ".tmp", "w") as f:
    json.dump({"partial": partial, "measured_steps": sorted(hook.results),
               "layers": [dict(l._asdict()) for l in hook.layers], "timings": timings,
               "train_log": hook.train_log,
               "results": {str(t): r for t, r in hook.results.items()}}, f, indent=1,
              default=lambda o: o if not isinstance(o, (np.generic,)) else o.item())
  os.replace(path + ".tmp", path)
