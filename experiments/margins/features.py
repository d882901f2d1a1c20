"""The study's tasks and the feature statistics the max-margin theory predicts.

`build_task(config)`: the dataset (`data_pipelines.algebraic_tasks`), the model
(`models.registry`, from config.model), the theoretical max margin gamma*
(`margins`; only for the polynomial nets the theory covers: z^2 on two-input
tasks, z^k on (n, k)-parity) and the group or parity support.

`analyze(task, params, active_fraction)`: per-neuron statistics. A neuron is
active when ||theta_i||^nu >= active_fraction * max_j ||theta_j||^nu (the
others keep random directions and carry no weight in f). Predictions at the
max margin:
* modular addition: each active neuron is one frequency j (normalised Fourier
  power 1 at j, `fourier`), its phases satisfy theta_u + theta_v = theta_w,
  every frequency 1..(p-1)/2 is used, and each carries the same share of
  sum_i ||theta_i||^3;
* parity: each active neuron lives on the support S, with equal |u_i| on S;
* group composition: each active neuron lies in one real irrep's isotypic
  component (`group_reps`), irrep rho carrying a share of sum ||theta_i||^3
  proportional to d_rho^2.5 / kappa_rho (the construction's weights).
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import ml_collections
import numpy as np

from data_pipelines import algebraic_tasks as data
from experiments.margins import fourier
from experiments.margins import group_reps
from experiments.margins import margins as margin_lib
from models import algebraic_nets as models
from models import registry

TASKS = ("modular_addition", "parity", "group")


class Task(NamedTuple):
  kind: str                      # one of TASKS
  dataset: data.AlgebraicDataset
  model: Any
  max_margin: Optional[float]
  group: Optional[data.FiniteGroup]
  support: Optional[np.ndarray]


def _check_model(model, dataset: data.AlgebraicDataset, fields: Dict[str, str]) -> None:
  """The model's sizes must be the dataset's (`fields`: model field -> what it is)."""
  want = {"vocab_size": dataset.vocab_size, "input_dim": dataset.vocab_size,
          "num_classes": dataset.num_classes}
  for field, what in fields.items():
    got = getattr(model, field)
    if got != want[field]:
      raise ValueError(f"config.model.{field}={got} but the {dataset.name} dataset has "
                       f"{want[field]} {what}")


def build_task(config: ml_collections.ConfigDict) -> Task:
  """Dataset, model and theoretical max margin for config.data.task."""
  dc = config.data
  model = registry.build(config.model)
  polynomial = model.activation in models.POLYNOMIAL
  if dc.task == "modular_addition":
    ds = data.modular_addition(dc.p)
    _check_model(model, ds, {"vocab_size": "residues", "num_classes": "classes"})
    best = margin_lib.max_margin_modular_addition(dc.p) if polynomial else None
    return Task(dc.task, ds, model, best, data.cyclic_group(dc.p), None)
  if dc.task == "parity":
    pc = dc.parity
    ds = data.sparse_parity(pc.n, pc.k, num_samples=pc.num_samples or None,
                            seed=int(config.seed))
    _check_model(model, ds, {"input_dim": "input coordinates", "num_classes": "classes"})
    if model.degree != pc.k and polynomial:
      raise ValueError(f"config.model.degree={model.degree} but the theory's x^k net "
                       f"for ({pc.n}, {pc.k})-parity has degree k={pc.k}")
    best = margin_lib.max_margin_parity(pc.k) if polynomial else None
    return Task(dc.task, ds, model, best, None, np.arange(pc.k))
  if dc.task == "group":
    group = data.make_group(dc.group.family, dc.group.n)
    ds = data.group_composition(group)
    _check_model(model, ds, {"vocab_size": "elements", "num_classes": "classes"})
    best = margin_lib.max_margin_group(group) if polynomial else None
    return Task(dc.task, ds, model, best, group, None)
  raise ValueError(f"config.data.task={dc.task!r} is not one of {TASKS}")


def active_neurons(params, nu: float, fraction: float) -> np.ndarray:
  """Neurons carrying ||theta_i||^nu >= fraction * max_j ||theta_j||^nu."""
  contrib = np.asarray(models.neuron_norms(params)) ** nu
  return contrib >= fraction * contrib.max()


def analyze(task: Task, params, active_fraction: float) -> Dict[str, Any]:
  """Feature statistics predicted by the max-margin theory (module doc).

  Keys starting with "_" hold arrays for the plots.
  """
  p_np = {k: np.asarray(v) for k, v in params.items()}
  nu = task.model.homogeneity
  active = active_neurons(params, nu, active_fraction)
  contrib = np.asarray(models.neuron_norms(params)) ** nu
  out: Dict[str, Any] = {"num_neurons": int(len(active)),
                         "num_active": int(active.sum())}
  if task.kind == "modular_addition":
    p = task.dataset.num_classes
    spec = fourier.neuron_spectra(p_np)
    k = p // 2
    used = sorted(set(spec.frequency[active].tolist()))
    weight = np.bincount(spec.frequency - 1, weights=contrib, minlength=k)
    out.update({
        "min_max_power": float(spec.max_power.min()),
        "min_max_power_active": float(spec.max_power[active].min()),
        "mean_max_power": float(spec.max_power.mean()),
        "min_vector_max_power_active":
            float(spec.per_vector_max_power[active].min()),
        "frequencies_used": used,
        "all_frequencies_used": len(used) == k,
        "frequency_counts": fourier.frequency_counts(spec.frequency[active], p).tolist(),
        "frequency_norm_share": (weight / weight.sum()).tolist(),
        "max_phase_error_active": float(spec.phase_error[active].max()),
        "_spectra": spec,
    })
  elif task.kind == "parity":
    support = task.support
    frac = fourier.parity_support_fraction(p_np["u"], support)
    bal = fourier.parity_balance(p_np["u"], support)
    out.update({
        "min_support_fraction": float(frac.min()),
        "min_support_fraction_active": float(frac[active].min()),
        "min_balance_active": float(bal[active].min()),
        "_support_fraction": frac,
    })
  elif task.kind == "group":
    irreps = group_reps.real_irreps(task.group)
    share, dom = group_reps.neuron_irrep_shares(p_np, irreps)
    weight = np.bincount(dom, weights=contrib, minlength=len(irreps))
    pred = np.array([0.0 if r.is_trivial else r.dim ** 2.5 / r.kappa
                     for r in irreps])
    out.update({
        "irreps": [f"{i}:{r.label}" for i, r in enumerate(irreps)],
        "irrep_dims": [r.dim for r in irreps],
        "min_irrep_share": float(share.min()),
        "min_irrep_share_active": float(share[active].min()),
        "irreps_used": sorted({int(i) for i in dom[active]}),
        "irrep_norm_share": (weight / weight.sum()).tolist(),
        "irrep_norm_share_predicted": (pred / pred.sum()).tolist(),
        "closed_form_max_margin":
            margin_lib.group_max_margin_closed_form(task.group, irreps),
        "_irrep_power": group_reps.neuron_irrep_power(p_np, irreps),
        "_dominant": dom,
    })
  out["_active"] = active
  out["_contrib"] = contrib
  return out
