"""The study's measurement hook: Kronecker metrics of every tapped layer at chosen steps.

`KroneckerMeasurements` is a hook of the common loop (`framework.loop`, added
with every=1 through `trainer.train(..., hooks=[(hook, 1)])`): after step t
(the state has had t updates) it measures only when t is in
`study.measure_steps`; step 0, before any update, is measured by `start`,
which `trainer.train` calls with the fresh state (`init_state`). For every
tapped weight W (m x n) it records, with the metrics of `kronecker_analysis`:

  gn       H = Fisher / Gauss-Newton from per-example gradients of
           study.num_examples inputs with labels sampled from the model
           (study.gn_labels="sampled", one label per input) or with every
           label y weighted by p(y|x) ("exact": the expectation over labels
           in closed form, for classifiers; groups of C samples). Inputs are
           drawn uniformly from the training data or (gn_inputs=
           "fisher_trace", classifiers) importance-sampled with
           probability ~ 1 - |p(.|x)|^2 and weights 1/(N q_x), which keeps H
           unbiased and its estimate well conditioned late in training. In-sample
           cosines of optimal / pi<k> / shampoo2 / shampoo / kfac to H_S,
           sigma_2/sigma_1 of R(H_S), and held-out cosines (factors from one
           half of the samples, H from the other half with the unbiased
           |H|^2), which remove the in-sample optimism;
  adagrad  H = sum_t g_t g_t^T over the training mini-batch gradients so far
           (every `study.adagrad_every`-th step is stored); in-sample cosines
           (this H is a fixed matrix, not an estimate);
  shortcut factors from study.num_batch_grads mini-batch gradients of batch
           size B (study.batch_sizes), labels sampled from the model ("true"
           Fisher) or the real labels ("empirical" Fisher), inputs drawn
           uniformly as in training, against the gn reference H (unbiased
           |H|^2).

The training gradient g_t of step t + 1 is the gradient at the state after t
updates on the batch the loop draws next: the hook reads that batch from the
training iterator and puts its position back (`get_state`/`set_state`), and
computes g_t with the framework's `train_step.compute_grads` (the step's own
gradient: loss sums / count). Measurement draws use their own generators
(seed + 1), so the study settings never change the training trajectory.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.kronecker import kronecker_analysis as ka
from experiments.kronecker import layer_taps as taps
from experiments.kronecker.kronecker_data import StudyData
from framework import hooks as hooks_lib
from framework import metrics as metrics_lib
from framework import progress as progress_lib
from framework import train_step as train_step_lib
from models import contract


@functools.partial(jax.jit, static_argnums=0)
def _predict(module, params, x):
  return jax.nn.softmax(module.apply({"params": params}, x))


def importance_sample(module, params, data: StudyData, rng: np.random.Generator, n: int,
                      uniform_mix: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """n training inputs drawn with probability q_x, and weights 1 / (N q_x).

  q = (1 - mix) t / sum(t) + mix / N with t_x = 1 - |p(.|x)|^2, the trace of
  the output-layer curvature diag(p) - p p^T of input x. Any q > 0 keeps
  (1/n) sum_i w_i H_{x_i} unbiased for the training-set mean (1/N) sum_x H_x;
  this one puts the samples where the Fisher is (late in training it is
  carried by the few inputs the model is unsure of, and uniform sampling
  leaves H_S dominated by its own noise).
  """
  tx, ty = data.train[data.input_key], data.train[data.label_key]
  if ty.ndim != 1:
    raise ValueError("study.gn_inputs='fisher_trace' needs one label per example "
                     "(a classifier)")
  probs = np.asarray(_predict(module, params, tx), np.float64)
  t = 1.0 - np.sum(probs.reshape(len(tx), -1) ** 2, axis=-1)
  q = (1.0 - uniform_mix) * t / max(t.sum(), 1e-300) + uniform_mix / len(tx)
  q /= q.sum()
  idx = rng.choice(len(tx), size=n, p=q)
  return tx[idx], ty[idx], (1.0 / (len(tx) * q[idx])).astype(np.float32)


def _chunked_per_example(module, layers, params, probes0, xs, ys, keys, weights, sampled,
                         chunk):
  gs, facs = [], []
  keys = np.asarray(keys)
  for s in range(0, len(xs), chunk):
    w = None if weights is None else np.asarray(weights[s:s + chunk], np.float32)
    g, f = taps.per_example_grads(module, layers, params, probes0, xs[s:s + chunk],
                                ys[s:s + chunk], keys[s:s + chunk], sampled, w)
    gs.append(jax.device_get(g))
    facs.append(jax.device_get(f))
  g = {k: np.concatenate([c[k] for c in gs]) for k in gs[0]}
  f = jax.tree.map(lambda *a: np.sum(np.stack(a), axis=0), *facs)
  return g, f


def _chunked_batch_grads(module, layers, params, xs, ys, keys, sampled, max_examples):
  nb, b = xs.shape[:2]
  per = max(1, max_examples // b)
  out = []
  keys = np.asarray(keys)
  for s in range(0, nb, per):
    out.append(jax.device_get(taps.batch_grads(module, layers, params, xs[s:s + per],
                                             ys[s:s + per], keys[s:s + per], sampled)))
  return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def measure(config, module, layers, probes0, params, data: StudyData, rng: np.random.Generator,
            key: jax.Array, ada: Dict[str, np.ndarray], ada_count: int, step: int
            ) -> Dict[str, Any]:
  """All metrics at one training step: {"gn": {layer: {...}}, "adagrad": ..., "shortcut": ...}."""
  sc = config.study
  opts = dict(pi_steps=tuple(sc.pi_steps), tol=float(sc.tol), max_iters=int(sc.max_iters))
  out: Dict[str, Any] = {"gn": {}, "adagrad": {}, "shortcut": {}, "dense_check": {}}
  n_ex = int(sc.num_examples)
  half = n_ex // 2
  k_gn, k_sc = jax.random.split(key)
  weights, group = None, 1
  if sc.gn_inputs == "uniform":
    xs, ys = data.sample(rng, n_ex)
  elif sc.gn_inputs == "fisher_trace":
    xs, ys, weights = importance_sample(module, params, data, rng, n_ex, float(sc.gn_uniform_mix))
  else:
    raise ValueError(f"study.gn_inputs={sc.gn_inputs!r} must be 'uniform' or 'fisher_trace'")
  if sc.gn_labels == "exact":
    # All labels of every input, weighted by p(y | x): the exact Fisher of
    # these inputs (no label-sampling noise); one group per input.
    probs = np.asarray(_predict(module, params, xs), np.float32)
    if probs.ndim != 2:
      raise ValueError("study.gn_labels='exact' needs one label per example (a classifier)")
    group = probs.shape[1]
    xs = np.repeat(xs, group, axis=0)
    ys = np.tile(np.arange(group, dtype=np.int32), n_ex)
    weights = probs.reshape(-1) * (1.0 if weights is None else np.repeat(weights, group))
  elif sc.gn_labels != "sampled":
    raise ValueError(f"study.gn_labels={sc.gn_labels!r} must be 'sampled' or 'exact'")
  keys = jax.random.split(k_gn, len(xs))
  cut = half * group
  per_ex = lambda sl: _chunked_per_example(
      module, layers, params, probes0, xs[sl], ys[sl], keys[sl],
      None if weights is None else weights[sl], sc.gn_labels == "sampled", int(sc.chunk))
  g1, f1 = per_ex(slice(0, cut))
  g2, f2 = per_ex(slice(cut, None))
  ref = {}
  for l in layers:
    g = np.concatenate([g1[l.name], g2[l.name]])
    fac = tuple(a + b for a, b in zip(f1[l.name], f2[l.name]))
    ref[l.name] = ka.analyze(g, fac, group=group, **opts)
    met = ka.layer_metrics(ref[l.name], svd=bool(sc.svd))
    if sc.heldout:
      met.update(ka.heldout_metrics(ka.analyze(g1[l.name], f1[l.name], group=group, **opts),
                                    ka.analyze(g2[l.name], None, group=group, **opts)))
    out["gn"][l.name] = met
    if l.m * l.n <= int(sc.dense_check_max):
      out["dense_check"][l.name] = ka.dense_check(g, ref[l.name])
    if ada_count >= 2:
      # Zero-padding the stored gradients to a power-of-two count only
      # rescales H (and L, R, A, B), which no metric here sees; it bounds the
      # number of compiled shapes.
      bucket = min(len(ada[l.name]), 1 << (ada_count - 1).bit_length())
      out["adagrad"][l.name] = ka.layer_metrics(ka.analyze(ada[l.name][:bucket], **opts),
                                                svd=bool(sc.svd))
  shortcut_steps = tuple(sc.shortcut_steps) or tuple(sc.measure_steps)
  if step in shortcut_steps and len(sc.batch_sizes):
    nb = int(sc.num_batch_grads)
    for labels in ("sampled", "real"):
      for b in sc.batch_sizes:
        b = int(b)
        bx, by = data.sample(rng, nb * b)
        bx = bx.reshape((nb, b) + bx.shape[1:])
        by = by.reshape((nb, b) + by.shape[1:])
        k_sc, sub = jax.random.split(k_sc)
        bkeys = jax.random.split(sub, (nb, b))
        est = _chunked_batch_grads(module, layers, params, bx, by, bkeys, labels == "sampled",
                                   int(sc.max_batch_examples))
        for l in layers:
          met = ka.shortcut_metrics(ref[l.name], ka.analyze(est[l.name], **opts), b)
          out["shortcut"].setdefault(l.name, {}).setdefault(labels, {})[b] = met
  return out


def flatten(step_result: Dict[str, Any]) -> Dict[str, float]:
  """One step's nested results as flat metric keys (view/layer/metric, ...)."""
  flat = {}
  for view in ("gn", "adagrad"):
    for layer, met in step_result[view].items():
      for k, v in met.items():
        flat[f"{view}/{layer}/{k}"] = v
  for layer, by_label in step_result["shortcut"].items():
    for labels, by_b in by_label.items():
      for b, met in by_b.items():
        for k, v in met.items():
          flat[f"shortcut/{layer}/{labels}/b{b}/{k}"] = v
  for layer, v in step_result["dense_check"].items():
    flat[f"dense_check/{layer}/max_abs_diff"] = v
  return flat



class KroneckerMeasurements:
  """The hook: `start(state)` at step 0, then `hook(info)` after every step.

  results: {step: measure(...) output}; train_log: [(step, held-out loss,
  held-out accuracy)] at the measured steps; layers: the tapped weights.
  Host state (the stored training gradients) is not checkpointed: the runner
  runs the study without checkpoints.

  After each measured step a progress line (`framework.progress.Progress`,
  one unit per measured step: count, rate, elapsed, ETA; measurements
  dominate the time between them) is printed and `on_measured(step)` is
  called (the runner rewrites the partial results file there).
  """

  def __init__(self, config, model: contract.FlaxModel, data: StudyData, train_iter,
               writer: metrics_lib.MetricWriter,
               on_measured: Optional[Callable[[int], None]] = None,
               print_fn: Optional[Callable[[str], None]] = None):
    if not isinstance(model, contract.FlaxModel):
      raise TypeError(f"the Kronecker study taps Flax modules; got {model!r}")
    sc = config.study
    self.config, self.model, self.module = config, model, model.module
    self.data, self.train_iter, self.writer = data, train_iter, writer
    self.total_steps = int(config.trainer.total_steps)
    self.measure_steps = sorted({int(t) for t in sc.measure_steps
                                 if 0 <= int(t) <= self.total_steps})
    self.every = int(sc.adagrad_every)
    example = {k: v[:1] for k, v in data.train.items()}
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), example))
    self.layers, probe_shapes = taps.discover_layers(
        self.module, abstract, jnp.asarray(example[data.input_key]),
        include=tuple(sc.layers) or None)
    self.probes0 = taps.zero_probes(probe_shapes)
    cap = self.total_steps // self.every + 1
    self.ada = {l.name: np.zeros((cap, l.m, l.n), np.float32) for l in self.layers}
    self.ada_count = 0
    self.results: Dict[int, Dict[str, Any]] = {}
    self.train_log: List[Tuple[int, float, float]] = []
    self.measure_s = 0.0
    self.on_measured = on_measured
    self.progress = progress_lib.Progress(len(self.measure_steps), "kronecker",
                                          unit="measured steps", print_fn=print_fn)
    self.rng = np.random.default_rng(int(config.seed) + 1)
    self.key = jax.random.PRNGKey(int(config.seed) + 1)
    layers = self.layers

    def layer_grads(params, batch):
      grad_sums, sums = train_step_lib.compute_grads(model, params, batch)
      count = jnp.maximum(contract.count_of(sums), 1.0)
      return {l.name: taps.get_path(grad_sums, l.path).reshape(l.m, l.n) / count
              for l in layers}
    self._layer_grads = jax.jit(layer_grads)
    self._eval_step = jax.jit(model.loss)

  def start(self, state):
    """`trainer.train`'s init_state: step 0 (before any update); the state is unchanged."""
    self._at(0, state.params)
    return state

  def __call__(self, info) -> None:
    self._at(int(info.step), info.state.params)

  def _at(self, step: int, params) -> None:
    t0 = time.perf_counter()
    if step in self.measure_steps and step not in self.results:
      self.key, sub = jax.random.split(self.key)
      self.results[step] = measure(self.config, self.module, self.layers, self.probes0, params,
                                   self.data, self.rng, sub, self.ada, self.ada_count, step)
      ev = hooks_lib.evaluate(self._eval_step, params, self.data.held_out_batches())
      flat = flatten(self.results[step])
      flat.update({"eval/loss": ev["loss"], "eval/accuracy": ev["accuracy"],
                   "time/measure_s": time.perf_counter() - t0})
      self.writer.write(step, flat)
      self.train_log.append((step, ev["loss"], ev["accuracy"]))
      self.progress.update(1, force=True, step=f"{step}/{self.total_steps}",
                           eval_loss=float(ev["loss"]),
                           measure_s=time.perf_counter() - t0)
      if self.on_measured is not None:
        self.on_measured(step)
    if step < self.total_steps and step % self.every == 0:
      # g_step: the gradient the next train step takes (same params, same batch).
      position = self.train_iter.get_state()
      batch = next(self.train_iter)
      self.train_iter.set_state(position)
      mats = jax.device_get(self._layer_grads(params, batch))
      for l in self.layers:
        self.ada[l.name][self.ada_count] = mats[l.name]
      self.ada_count += 1
    self.measure_s += time.perf_counter() - t0
