"""The margin probe: a loop hook that measures the normalised margin in training.

On the whole dataset D, at the current parameters theta (neuron axis first):

    gamma(theta)  = min_{(x,y) in D} ( f(x)[y] - max_{y' != y} f(x)[y'] ),
    ||theta||_{2,nu}^nu = sum_i ||theta_i||_2^nu,   nu = model.homogeneity,
    normalised margin = gamma(theta) / ||theta||_{2,nu}^nu,
    margin fraction   = normalised margin / gamma*   (gamma* from `margins`),

plus the mean cross-entropy, the accuracy (margin > 0) and lambda_t. Added to
the trainer as `hooks=[(probe, trainer.steps_per_call)]`; it measures every
`every` steps, every `early_every` steps up to `early_steps`, and at the last
step, writes `margin/<name>` records to the run's MetricWriter and keeps the
records in `history` for the plots and the report.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from models import algebraic_nets

PREFIX = "margin/"


@functools.partial(jax.jit, static_argnums=0)
def _measure(model, params, inputs, labels):
  logits = model.apply(params, inputs)
  marg = algebraic_nets.margins(logits, labels)
  norm_pow = algebraic_nets.l2nu_penalty(params, model.homogeneity)
  return {
      "ce": jnp.mean(algebraic_nets.cross_entropy(logits, labels)),
      "num_correct": jnp.sum(marg > 0),
      "min_margin": jnp.min(marg),
      "norm_pow": norm_pow,
      "normalized_margin": jnp.min(marg) / norm_pow,
  }


def evaluate(model, params, inputs, labels) -> Dict[str, float]:
  """Full-data CE, accuracy, min margin, ||theta||_{2,nu}^nu and normalised margin."""
  out = {k: float(v) for k, v in
         _measure(model, params, jnp.asarray(inputs), jnp.asarray(labels)).items()}
  out["accuracy"] = out.pop("num_correct") / len(labels)
  return out


class MarginProbe:
  """Hook `probe(info)`: measures at the due steps (module doc)."""

  def __init__(self, model, inputs: np.ndarray, labels: np.ndarray,
               max_margin: Optional[float], *, every: int, early_every: int,
               early_steps: int, total_steps: int, writer=None):
    self.model = model
    self.inputs = jnp.asarray(inputs)
    self.labels = jnp.asarray(labels)
    self.max_margin = max_margin
    self.every, self.early_every, self.early_steps = every, early_every, early_steps
    self.total_steps = total_steps
    self.writer = writer
    self.history: List[Dict[str, Any]] = []

  def due(self, step: int) -> bool:
    return (step % self.every == 0 or step >= self.total_steps
            or (step <= self.early_steps and step % self.early_every == 0))

  def measure(self, step: int, params) -> Dict[str, Any]:
    rec = evaluate(self.model, params, self.inputs, self.labels)
    rec["lambda"] = float(self.model.penalty_weight(np.float64(step)))
    if self.max_margin:
      rec["margin_fraction"] = rec["normalized_margin"] / self.max_margin
    rec["step"] = int(step)
    return rec

  def __call__(self, info) -> None:
    if not self.due(info.step):
      return
    rec = self.measure(info.step, info.state.params)
    self.history.append(rec)
    if self.writer is not None:
      self.writer.write(info.step, {PREFIX + k: v for k, v in rec.items() if k != "step"})


def history_from_records(records, up_to: int) -> List[Dict[str, Any]]:
  """Probe records of an earlier run in this workdir (metrics.jsonl), up to a step.

  A resumed run prepends them, so the plots cover the whole run.
  """
  out = []
  for r in records:
    if r["step"] <= up_to and PREFIX + "normalized_margin" in r:
      out.append({"step": r["step"], **{k[len(PREFIX):]: v for k, v in r.items()
                                        if k.startswith(PREFIX)}})
  return out
