"""Runner: margin maximisation on algebraic tasks (Morwani et al., ICLR 2024).

`run(config, workdir) -> dict` trains the paper's one-hidden-layer bias-free
networks on a complete algebraic dataset (modular addition, sparse parity or
finite-group composition) with

    L(theta) = mean_{(x,y)} CE(f(theta; x), y) + lambda_t ||theta||_{2,nu}^nu,

lambda_t annealed geometrically from `lambda_start` to `lambda_end` (small
regularisation drives the normalised margin to its maximum as lambda -> 0).
It logs the normalised margin as a fraction of the theoretical maximum, and
writes margin-vs-step and feature plots (Fourier spectra / parity support /
irrep shares) plus `report.md` into workdir.

Config (ml_collections.ConfigDict; defaults in `default_config()`):
  task: "modular_addition" | "parity" | "group"
  p: modulus; parity.{n, k, num_samples (0: all 2^n)}; group.{family, n}
  model.{width, activation ("quadratic" | "power" | "relu"), init_scale}
  train.{steps, optimizer ("adam" | "normalized_gd" | "sgd"), lr, lr_end
         (cosine), b2, eps, batch_size (0: full batch), lambda_start,
         lambda_end, lambda_hold, lambda_decay_end, log_objective, log_every, early_log_every,
         early_steps, seed}
  analysis.active_fraction: neurons with ||theta_i||^nu below this fraction
    of the largest are "inactive" (they keep random directions and carry no
    weight in f); feature statistics are reported for all and for active.

Recipe that reaches the max margin (see report.md of each config): Adam with
lr 1e-2 (cosine to 1e-4), lambda annealed 1e-5 -> 1e-30 over the first 80%
of the run (then held while the lr decays), and
the monotone reparametrisation log(CE + lambda R) of the objective, which
keeps gradients O(1) while the loss falls to ~exp(-margin) and margins grow
to ~30-80 (the finite-lambda optimum of CE is only ~1 - O(1/margin) of the
max margin when the optimal dual weights are not uniform, e.g. for S_n).
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import optax

from data_pipelines import algebraic as data
from framework.metrics import MetricWriter
from framework.progress import Progress
from models import algebraic as models
from tools import fourier
from tools import group_reps
from tools import margins as margin_lib


# --------------------------------------------------------------------------
# Task set-up.


class Task(NamedTuple):
  dataset: data.AlgebraicDataset
  model: Any
  max_margin: float | None
  group: data.FiniteGroup | None
  support: np.ndarray | None


def build_task(config: ml_collections.ConfigDict) -> Task:
  """Dataset, model and theoretical max margin for config.task."""
  mc = config.model
  if config.task == "modular_addition":
    ds = data.modular_addition(config.p)
    model = models.TwoInputNet(config.p, config.p, mc.width, mc.activation)
    best = (margin_lib.max_margin_modular_addition(config.p)
            if mc.activation == "quadratic" else None)
    return Task(ds, model, best, data.cyclic_group(config.p), None)
  if config.task == "parity":
    pc = config.parity
    ds = data.sparse_parity(pc.n, pc.k, num_samples=pc.num_samples or None,
                            seed=config.train.seed)
    model = models.ParityNet(pc.n, mc.width, degree=pc.k,
                             activation=mc.activation)
    best = (margin_lib.max_margin_parity(pc.k)
            if mc.activation == "power" else None)
    return Task(ds, model, best, None, np.arange(pc.k))
  if config.task == "group":
    group = data.make_group(config.group.family, config.group.n)
    ds = data.group_composition(group)
    model = models.TwoInputNet(group.order, group.order, mc.width,
                               mc.activation)
    best = (margin_lib.max_margin_group(group)
            if mc.activation == "quadratic" else None)
    return Task(ds, model, best, group, None)
  raise ValueError(f"unknown task {config.task!r}")


# --------------------------------------------------------------------------
# Training.


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example log(1 + sum_{y' != y} exp(-(f[y] - f[y']))).

  Written with log1p around the shift m = max(0, max_{y'} f[y'] - f[y]) so
  that the value and the gradients stay accurate in float32 when every
  margin is large (then the usual log-softmax rounds the loss and the
  gradient of the correct logit to exactly 0).
  """
  correct = jnp.take_along_axis(logits, labels[:, None], axis=1)
  z = logits - correct  # z_y = 0, z_y' = -margin_y'.
  wrong = jnp.arange(logits.shape[1])[None] != labels[:, None]
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.where(wrong, z, -jnp.inf),
                                                axis=1, keepdims=True), 0.0))
  s = jnp.sum(jnp.where(wrong, jnp.exp(z - m), 0.0), axis=1, keepdims=True)
  return (m + jnp.log1p(jnp.expm1(-m) + s))[:, 0]


class TrainState(NamedTuple):
  step: jax.Array
  params: Dict[str, jax.Array]
  opt_state: Any


def lambda_at(step, tc) -> jax.Array:
  """lambda_t: lambda_start until lambda_hold * steps, then geometric decay
  to lambda_end at lambda_decay_end * steps, then constant (so that the
  optimiser can settle at the final lambda while the lr decays).

  Works on traced steps (inside jit) and on numpy scalars (for logging).
  """
  hold = tc.lambda_hold * tc.steps
  end = tc.lambda_decay_end * tc.steps
  xp = np if isinstance(step, (np.generic, np.ndarray, int, float)) else jnp
  frac = xp.clip((step - hold) / max(end - hold, 1), 0.0, 1.0)
  return tc.lambda_start * (tc.lambda_end / tc.lambda_start) ** frac


def make_optimizer(tc) -> optax.GradientTransformation:
  lr = optax.cosine_decay_schedule(tc.lr, tc.steps, alpha=tc.lr_end / tc.lr)
  if tc.optimizer == "adam":
    return optax.adam(lr, b2=tc.b2, eps=tc.eps)
  if tc.optimizer == "normalized_gd":
    # Normalised gradient descent: theta <- theta - lr g / ||g||.
    return optax.chain(_normalize_updates(), optax.scale_by_learning_rate(lr))
  if tc.optimizer == "sgd":
    return optax.sgd(lr, momentum=0.9)
  raise ValueError(f"unknown optimizer {tc.optimizer!r}")


def _normalize_updates() -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    norm = optax.global_norm(updates)
    return jax.tree.map(lambda g: g / (norm + 1e-30), updates), state
  return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_train_chunk(model, optimizer, tc, nu: float, num_examples: int):
  """Jitted `chunk(state, inputs, labels, key, n)`: n steps via lax.scan."""
  batch = tc.batch_size if tc.batch_size else 0

  def loss_fn(params, inputs, labels, lam):
    ce = jnp.mean(cross_entropy(model.apply(params, inputs), labels))
    reg = models.l2nu_penalty(params, nu)
    total = ce + lam * reg
    # log is monotone: same minimisers, gradients rescaled by 1 / total so
    # they stay O(1) once the loss is ~exp(-margin) (Adam's eps and
    # float32 underflow of g^2 would otherwise freeze training).
    return (jnp.log(total) if tc.log_objective else total), ce

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def one_step(carry, key):
    state, inputs, labels = carry
    if batch:
      idx = jax.random.choice(key, num_examples, (batch,), replace=False)
      x, y = inputs[idx], labels[idx]
    else:
      x, y = inputs, labels
    lam = lambda_at(state.step, tc)
    (_, ce), grads = grad_fn(state.params, x, y, lam)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (TrainState(state.step + 1, params, opt_state), inputs, labels), ce

  @functools.partial(jax.jit, static_argnums=4)
  def chunk(state, inputs, labels, key, n):
    """n steps; returns (state, next key)."""
    keys = jax.random.split(key, n + 1)
    (state, _, _), _ = jax.lax.scan(one_step, (state, inputs, labels),
                                    keys[1:])
    return state, keys[0]

  return chunk


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(model, params, inputs, labels):
  logits = model.apply(params, inputs)
  marg = margin_lib.margins(logits, labels)
  norm_pow = margin_lib.l2nu_norm_pow(params, model.homogeneity)
  return {
      "loss": jnp.mean(cross_entropy(logits, labels)),
      "num_correct": jnp.sum(marg > 0),
      "min_margin": jnp.min(marg),
      "norm_pow": norm_pow,
      "normalized_margin": jnp.min(marg) / norm_pow,
  }


def evaluate(model, params, inputs, labels) -> Dict[str, float]:
  """Loss, accuracy, min margin, ||theta||_{2,nu}^nu and normalised margin."""
  out = {k: float(v) for k, v in
         _evaluate(model, params, jnp.asarray(inputs),
                   jnp.asarray(labels)).items()}
  out["accuracy"] = out.pop("num_correct") / len(labels)
  return out


def train(config, task: Task, writer: MetricWriter | None = None,
          progress: bool = True):
  """Trains; returns (params, history list of dicts, seconds)."""
  tc = config.train
  model = task.model
  nu = model.homogeneity
  optimizer = make_optimizer(tc)

  @jax.jit
  def init_state(seed):
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_key, config.model.init_scale)
    return key, TrainState(jnp.zeros((), jnp.int32), params,
                           optimizer.init(params))

  # One compiled init instead of many small eager ops.
  key, state = init_state(tc.seed)
  inputs = jnp.asarray(task.dataset.inputs)
  labels = jnp.asarray(task.dataset.labels)
  chunk = make_train_chunk(model, optimizer, tc, nu, len(labels))
  history = []
  prog = Progress(tc.steps, config.task) if progress else None
  t0 = time.perf_counter()
  done = 0
  while done < tc.steps:
    every = tc.early_log_every if done < tc.early_steps else tc.log_every
    n = min(every, tc.steps - done)
    state, key = chunk(state, inputs, labels, key, n)
    done += n
    rec = evaluate(model, state.params, inputs, labels)
    rec["lambda"] = float(lambda_at(np.float64(done), tc))
    if task.max_margin:
      rec["margin_fraction"] = rec["normalized_margin"] / task.max_margin
    rec["step"] = done
    history.append(rec)
    if writer is not None:
      writer.write(done, {f"train/{k}": v for k, v in rec.items()
                          if k != "step"})
    if prog is not None:
      prog.update(n, frac=rec.get("margin_fraction", rec["normalized_margin"]))
  seconds = time.perf_counter() - t0
  return state.params, history, seconds


# --------------------------------------------------------------------------
# Feature analysis.


def active_neurons(params, nu: float, fraction: float) -> np.ndarray:
  """Neurons carrying ||theta_i||^nu >= fraction * max_j ||theta_j||^nu."""
  contrib = np.asarray(models.neuron_norms(params)) ** nu
  return contrib >= fraction * contrib.max()


def analyze(config, task: Task, params) -> Dict[str, Any]:
  """Feature statistics predicted by the max-margin theory."""
  p_np = {k: np.asarray(v) for k, v in params.items()}
  nu = task.model.homogeneity
  active = active_neurons(params, nu, config.analysis.active_fraction)
  contrib = np.asarray(models.neuron_norms(params)) ** nu
  out: Dict[str, Any] = {"num_neurons": int(len(active)),
                         "num_active": int(active.sum())}
  if config.task == "modular_addition":
    spec = fourier.neuron_spectra(p_np)
    k = config.p // 2
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
        "frequency_counts": fourier.frequency_counts(spec.frequency[active],
                                                     config.p).tolist(),
        "frequency_norm_share": (weight / weight.sum()).tolist(),
        "max_phase_error_active": float(spec.phase_error[active].max()),
        "_spectra": spec,
    })
  elif config.task == "parity":
    support = task.support
    frac = fourier.parity_support_fraction(p_np["u"], support)
    bal = fourier.parity_balance(p_np["u"], support)
    out.update({
        "min_support_fraction": float(frac.min()),
        "min_support_fraction_active": float(frac[active].min()),
        "min_balance_active": float(bal[active].min()),
        "_support_fraction": frac,
    })
  elif config.task == "group":
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


# --------------------------------------------------------------------------
# Plots and report.


def plot_margin(history, task: Task, path: str) -> None:
  """Normalised margin / max vs step, the gap on a log scale, loss and lambda."""
  steps = np.array([h["step"] for h in history])
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  name = task.dataset.name
  if task.max_margin:
    frac = np.array([h["margin_fraction"] for h in history])
    axes[0].plot(steps, frac)
    axes[0].axhline(1.0, color="k", ls="--", lw=1, label="theoretical max")
    axes[0].set_ylabel("normalised margin / max margin")
    axes[0].set_ylim(max(frac.min(), -0.2) - 0.02, 1.05)
    axes[0].legend(loc="lower right")
    gap = np.maximum(1.0 - frac, 1e-7)
    axes[1].semilogy(steps, gap)
    axes[1].set_ylabel("1 - normalised margin / max")
    axes[1].set_title(f"final fraction {frac[-1]:.4f}")
  else:
    axes[0].plot(steps, [h["normalized_margin"] for h in history])
    axes[0].set_ylabel("normalised margin")
    axes[1].semilogy(steps, [h["norm_pow"] for h in history])
    axes[1].set_ylabel("||theta||_{2,nu}^nu")
  axes[0].set_title(f"{name}: L_(2,{task.model.homogeneity}) normalised "
                    "margin")
  axes[2].semilogy(steps, [max(h["loss"], 1e-45) for h in history],
                   label="mean CE")
  axes[2].semilogy(steps, [h["lambda"] for h in history], label="lambda")
  axes[2].legend()
  for ax in axes:
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_features(config, task: Task, params, stats, path: str) -> None:
  """Fourier spectra / parity support / irrep shares, one PNG."""
  order = np.argsort(-stats["_contrib"])
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  if config.task == "modular_addition":
    spec = stats["_spectra"]
    idx = np.lexsort((-stats["_contrib"], spec.frequency))
    im = axes[0].imshow(spec.spectrum[idx].T, aspect="auto", origin="lower",
                        extent=[0, len(idx), 0.5, config.p // 2 + 0.5],
                        cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[0])
    axes[0].set_xlabel("neuron (sorted by frequency)")
    axes[0].set_ylabel("frequency j (+-j pooled)")
    axes[0].set_title("normalised Fourier power of (u, v, w)")
    axes[1].bar(np.arange(1, config.p // 2 + 1), stats["frequency_counts"])
    axes[1].set_xlabel("dominant frequency")
    axes[1].set_ylabel("# active neurons")
    axes[1].set_title(f"frequencies used: {len(stats['frequencies_used'])}"
                      f"/{config.p // 2}")
    # Largest neuron of the lowest frequency: the easiest wave to read.
    i = idx[0]
    a = np.arange(config.p)
    for k in ("u", "v", "w"):
      axes[2].plot(a, np.asarray(params[k])[i], "o-", ms=3, label=k)
    axes[2].set_title(f"neuron {i}: freq {spec.frequency[i]}, "
                      f"max power {spec.max_power[i]:.4f}")
    axes[2].set_xlabel("a / b / c")
    axes[2].legend()
  elif config.task == "parity":
    u = np.asarray(params["u"])[order]
    im = axes[0].imshow(np.abs(u).T, aspect="auto", origin="lower",
                        cmap="magma")
    fig.colorbar(im, ax=axes[0])
    axes[0].set_xlabel("neuron (sorted by norm)")
    axes[0].set_ylabel("input coordinate")
    axes[0].set_title(f"|u_i|, S = {task.support.tolist()}")
    axes[1].bar(np.arange(len(order)), stats["_support_fraction"][order])
    axes[1].axhline(1.0, color="k", ls="--", lw=1)
    axes[1].set_xlabel("neuron (sorted by norm)")
    axes[1].set_title("||u_S||^2 / ||u||^2")
    axes[2].bar(np.arange(len(order)), stats["_contrib"][order])
    axes[2].set_xlabel("neuron (sorted by norm)")
    axes[2].set_title(f"||theta_i||^{task.model.homogeneity}")
  else:
    power = stats["_irrep_power"]
    share = power / power.sum(axis=1, keepdims=True)
    idx = np.lexsort((-stats["_contrib"], stats["_dominant"]))
    im = axes[0].imshow(share[idx].T, aspect="auto", origin="lower",
                        cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[0])
    axes[0].set_yticks(range(len(stats["irreps"])))
    axes[0].set_yticklabels(stats["irreps"])
    axes[0].set_xlabel("neuron (sorted by dominant irrep)")
    axes[0].set_title("share of ||theta_i||^2 per irrep")
    x = np.arange(len(stats["irreps"]))
    axes[1].bar(x - 0.2, stats["irrep_norm_share"], 0.4, label="trained")
    axes[1].bar(x + 0.2, stats["irrep_norm_share_predicted"], 0.4,
                label="construction")
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(stats["irreps"])
    axes[1].set_title("share of sum ||theta_i||^3 per irrep")
    axes[1].legend()
    axes[2].hist(share.max(axis=1), bins=20, range=(0.0, 1.0))
    axes[2].set_xlabel("max_rho share of ||theta_i||^2 in rho")
    axes[2].set_title("single-irrep share per neuron")
  fig.suptitle(task.dataset.name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _fmt(x) -> str:
  if isinstance(x, bool):
    return str(x)
  if isinstance(x, float):
    return f"{x:.6f}" if 1e-3 <= abs(x) < 1e4 else f"{x:.6g}"
  if isinstance(x, (list, tuple)):
    return "[" + ", ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                           for v in x) + "]"
  return str(x)


def write_report(config, task: Task, history, stats, seconds: float,
                 path: str, figures: Dict[str, str]) -> None:
  final = history[-1]
  lines = [f"# {task.dataset.name}: margin maximisation "
           "(Morwani et al., ICLR 2024)", ""]
  lines += [f"- task: `{config.task}`, model: `{task.model}`",
            f"- homogeneity nu = {task.model.homogeneity}; norm "
            "||theta||_{2,nu} = (sum_i ||theta_i||_2^nu)^(1/nu); normalised "
            "margin = min_(x,y) (f[y] - max_{y'!=y} f[y']) / ||theta||_{2,nu}^nu",
            f"- training: {config.train.steps} steps, {config.train.optimizer} "
            f"lr {config.train.lr} -> {config.train.lr_end}, lambda "
            f"{config.train.lambda_start:g} -> {config.train.lambda_end:g}, "
            f"batch {'full' if not config.train.batch_size else config.train.batch_size}, "
            f"log objective {config.train.log_objective}",
            f"- wall time: {seconds:.1f} s", ""]
  theory = {
      "modular_addition": "gamma* = sqrt(2/27) / (sqrt(p) (p - 1))",
      "parity": "gamma* = k! sqrt(2 (k+1)^-(k+1))",
      "group": "gamma* = 2/(3 sqrt(3) |G|^1.5) min_tau max_{rho != 1} "
               "lambda_rho(tau)/sqrt(d_rho) (LP over class functions tau); "
               "equals 2 / (3 sqrt(3|G|) sum_{rho != 1} d_rho^2.5 / kappa_rho) "
               "when the character condition holds (tools/margins.py)",
  }[config.task]
  if task.max_margin:
    lines += [f"- theoretical maximum: {theory}", ""]
  lines += ["## Margin", "", "| quantity | value |", "| --- | --- |",
            f"| final normalised margin | {final['normalized_margin']:.6g} |"]
  if task.max_margin:
    best = max(h["margin_fraction"] for h in history)
    lines += [f"| theoretical max margin | {task.max_margin:.6g} |",
              f"| final fraction of max | {final['margin_fraction']:.4f} |",
              f"| best fraction of max (logged) | {best:.4f} |"]
  lines += [f"| train accuracy | {final['accuracy']:.4f} |",
            f"| final mean CE | {final['loss']:.3g} |", ""]
  lines += ["## Features", "", "| statistic | value |", "| --- | --- |"]
  for k, v in stats.items():
    if not k.startswith("_"):
      lines.append(f"| {k} | {_fmt(v)} |")
  lines += ["", "Active neurons: ||theta_i||^nu >= "
            f"{config.analysis.active_fraction} x the largest.", ""]
  for name, fig in figures.items():
    lines += [f"![{name}]({fig})", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


# --------------------------------------------------------------------------
# Entry point.


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Train, analyse, plot, report. Returns final summary figures."""
  os.makedirs(workdir, exist_ok=True)
  task = build_task(config)
  writer = MetricWriter(workdir)
  params, history, seconds = train(config, task, writer,
                                   progress=config.get("progress", True))
  stats = analyze(config, task, params)
  figures = {"margin": "margin_vs_step.png"}
  plot_margin(history, task, os.path.join(workdir, figures["margin"]))
  feat = {"modular_addition": "fourier.png", "parity": "parity_support.png",
          "group": "irreps.png"}[config.task]
  figures["features"] = feat
  plot_features(config, task, params, stats, os.path.join(workdir, feat))
  write_report(config, task, history, stats, seconds,
               os.path.join(workdir, "report.md"), figures)
  final = history[-1]
  summary = {
      "normalized_margin": final["normalized_margin"],
      "max_margin": task.max_margin,
      "margin_fraction": final.get("margin_fraction"),
      "accuracy": final["accuracy"],
      "loss": final["loss"],
      "train_seconds": seconds,
  }
  summary.update({k: v for k, v in stats.items() if not k.startswith("_")})
  writer.write(config.train.steps, {f"final/{k}": v for k, v in summary.items()
                                    if isinstance(v, (int, float))
                                    and not isinstance(v, bool)})
  writer.close()
  np.savez(os.path.join(workdir, "params.npz"),
           **{k: np.asarray(v) for k, v in params.items()})
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, default=float)
  return summary


def default_config() -> ml_collections.ConfigDict:
  """Defaults shared by experiments/configs/{modadd,parity,group}_*.py."""
  c = ml_collections.ConfigDict()
  c.runner = "experiments.algebraic"
  c.task = "modular_addition"
  c.p = 11
  c.parity = ml_collections.ConfigDict(dict(n=10, k=4, num_samples=0))
  c.group = ml_collections.ConfigDict(dict(family="symmetric", n=3))
  c.model = ml_collections.ConfigDict(
      dict(width=96, activation="quadratic", init_scale=1.0))
  c.train = ml_collections.ConfigDict(dict(
      steps=20000,
      optimizer="adam",       # adam | normalized_gd | sgd
      lr=1e-2, lr_end=1e-4,   # cosine decay
      b2=0.999, eps=1e-8,
      batch_size=0,           # 0: full batch
      # lambda_t: held for lambda_hold * steps, then geometric decay.
      # lambda_start must be small enough that the first steps do not shrink
      # the whole network (at p = 71, 1e-3 killed ~60% of the neurons and
      # left some frequencies with too few to reach the max margin).
      lambda_start=1e-5, lambda_end=1e-30, lambda_hold=0.0,
      lambda_decay_end=0.8,
      log_objective=True,     # minimise log(CE + lambda R): same minimisers.
      log_every=500,
      # Denser logging at the start (one extra compile for the chunk size).
      early_log_every=25, early_steps=1000,
      seed=0))
  c.analysis = ml_collections.ConfigDict(dict(active_fraction=0.01))
  c.progress = True
  return c
