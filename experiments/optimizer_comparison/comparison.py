"""Runner: AdamW vs Shampoo vs SOAP on the LM, each at its best learning rate.

For every optimizer o in `config.order` and every peak learning rate eta in
its grid, trains `config.base` (an experiments.lm config) with
config.optimizer = o and schedule.peak_lr = eta, in `workdir/runs/<o>_lr<eta>`
(same model init, same batches, same schedule shape, no checkpoints). Then

    eta*(o) = argmin_eta  L_eval(o, eta, final step)

and the report compares L_eval(o, eta*(o)). The learning rate is picked on
the same eval split the table reports (a small-sweep protocol; the eval
batches are never trained on). A best lr at the edge of its grid is flagged:
the optimum may lie outside.

Each run executes in its own process (config.isolate: `python -m
experiments.optimizer_comparison.comparison <run_dir>` on the config written there)
with XLA_FLAGS + config.xla_flags, and is killed after config.run_timeout_s,
so a run that hangs or crashes is listed in the report and the sweep goes
on. Re-running with the same workdir reuses finished runs whose config is
unchanged.

Writes into workdir: metrics.jsonl / tb (per step, the best run's train and
eval loss of each optimizer), loss_curves.png (one line per optimizer at its
best lr), lr_sweep.png (final eval loss vs lr), results.json (every run) and
report.md.

  python -m experiments.launch --workdir=runs/optimizer_comparison \
      --config=experiments/optimizer_comparison/comparison_config.py   # or ...py:tiny
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import ml_collections

from experiments import lm
from framework import metrics as metrics_lib
from framework import progress as progress_lib

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_INPUT_CONFIG = "input_config.json"


def optimizer_names(config: ml_collections.ConfigDict) -> list[str]:
  names = [n.strip() for n in str(config.order).split(",") if n.strip()]
  unknown = [n for n in names if n not in config.optimizers]
  if unknown or not names:
    raise ValueError(f"config.order={config.order!r}: unknown optimizer(s) {unknown}; "
                     f"known: {sorted(config.optimizers.keys())}")
  return names


def learning_rates(config: ml_collections.ConfigDict, name: str) -> list[float]:
  own = tuple(config.optimizers[name].get("learning_rates", ()) or ())
  grid = own or tuple(config.learning_rates)
  if not grid:
    raise ValueError(f"no learning rates for {name!r}: set config.learning_rates or "
                     f"config.optimizers.{name}.learning_rates")
  return sorted(float(x) for x in grid)


def default_config() -> ml_collections.ConfigDict:
  """The schema of comparison configs."""
  from experiments.optimizer_comparison import comparison_config  # pylint: disable=g-import-not-at-top
  return comparison_config.get_config()


def run_dir_name(name: str, lr: float) -> str:
  return f"{name}_lr{lr:.3g}"


def sub_config(config: ml_collections.ConfigDict, name: str,
               lr: float) -> ml_collections.ConfigDict:
  """The experiments.lm config of one (optimizer, learning rate) setting."""
  opt = config.optimizers[name]
  c = ml_collections.ConfigDict(config.base.to_dict())
  c.optimizer.name = str(opt.name)
  c.optimizer.kwargs = dict(opt.get("kwargs", {}) or {})
  c.schedule.peak_lr = float(lr)
  return c


def _finite(x: Any) -> Optional[float]:
  try:
    x = float(x)
  except (TypeError, ValueError):
    return None
  return x if math.isfinite(x) else None


def select_best(eval_losses: Mapping[float, Optional[float]]) -> dict[str, Any]:
  """Best lr by final eval loss; non-finite / missing losses never win.

  Returns {"lr", "eval_loss", "edge"}; edge is "low"/"high" when the best lr
  is the smallest/largest of a grid of at least two, else "". lr is None
  when no run finished with a finite loss.
  """
  grid = sorted(eval_losses)
  finite = {lr: _finite(v) for lr, v in eval_losses.items()}
  ok = [lr for lr in grid if finite[lr] is not None]
  if not ok:
    return {"lr": None, "eval_loss": None, "edge": ""}
  best = min(ok, key=lambda lr: finite[lr])
  edge = ""
  if len(grid) >= 2:
    edge = "low" if best == grid[0] else "high" if best == grid[-1] else ""
  return {"lr": best, "eval_loss": finite[best], "edge": edge}


def read_curves(run_dir: str) -> dict[str, list[tuple[int, float]]]:
  """(step, value) lists of train/loss and eval/loss from a run's metrics.jsonl."""
  path = os.path.join(run_dir, "metrics.jsonl")
  out: dict[str, list[tuple[int, float]]] = {"train": [], "eval": []}
  if not os.path.exists(path):
    return out
  for r in metrics_lib.read_metrics(path):
    for key, name in (("train/loss", "train"), ("eval/loss", "eval")):
      if key in r:
        v = _finite(r[key])
        out[name].append((int(r["step"]), v if v is not None else float("nan")))
  return out


def merge_xla_flags(current: str, extra: str) -> str:
  """XLA_FLAGS `current` with the flags of `extra` added; extra wins per flag name."""
  flags: dict[str, str] = {}
  for token in current.split() + extra.split():
    flags[token.split("=", 1)[0]] = token
  return " ".join(flags.values())


def _run_in_subprocess(run_dir: str, timeout_s: float, xla_flags: str) -> Optional[str]:
  """Runs `python -m experiments.optimizer_comparison.comparison run_dir`; returns an error or None.

  A fresh process gets its own XLA flags (set before jax is imported) and a
  run that hangs or crashes is killed / reported without ending the sweep.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = merge_xla_flags(env.get("XLA_FLAGS", ""), xla_flags)
  env.setdefault("OPENBLAS_NUM_THREADS", "1")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH", "")) if p)
  log_path = os.path.join(run_dir, "log.txt")
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "experiments.optimizer_comparison.comparison", run_dir],
                            cwd=_REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      return f"timed out after {timeout_s:.0f} s (killed); see {log_path}"
  if rc != 0:
    with open(log_path, errors="replace") as f:
      tail = [l.strip() for l in f.readlines()[-200:] if l.strip()]
    last = next((l for l in reversed(tail) if "Error" in l or "error" in l), tail[-1] if tail else "")
    return f"exit code {rc}: {last[:300]}; see {log_path}"
  if not os.path.exists(os.path.join(run_dir, "summary.json")):
    return f"no summary.json; see {log_path}"
  return None


def _run_one(config: ml_collections.ConfigDict, run_dir: str, *, isolate: bool = True,
             timeout_s: float = 3600.0, xla_flags: str = "") -> dict[str, Any]:
  """Trains one setting (or reuses a finished run with the same config)."""
  cfg_json = config.to_json_best_effort(indent=2)
  done = os.path.join(run_dir, "summary.json")
  timing = os.path.join(run_dir, "timing.json")
  if os.path.exists(done) and os.path.exists(timing):
    with open(os.path.join(run_dir, "config.json")) as f:
      same = f.read() == cfg_json
    if same:
      with open(done) as f, open(timing) as g:
        return {**json.load(f), **json.load(g), "error": None, "reused": True}
  if os.path.exists(run_dir):
    shutil.rmtree(run_dir)  # unfinished or stale: metrics.jsonl would append
  os.makedirs(run_dir)
  t0 = time.perf_counter()
  summary: dict[str, Any] = {}
  if isolate:
    with open(os.path.join(run_dir, _INPUT_CONFIG), "w") as f:
      f.write(cfg_json)
    error = _run_in_subprocess(run_dir, timeout_s, xla_flags)
    if error is None:
      with open(done) as f:
        summary = json.load(f)
  else:
    try:
      summary, error = lm.run(config, run_dir), None
    except Exception as err:  # pylint: disable=broad-except
      # A diverging or failing setting must not end the whole sweep.
      logging.exception("run %s failed", run_dir)
      error = f"{type(err).__name__}: {err}"
  wall = {"wall_s": time.perf_counter() - t0, "load_avg": os.getloadavg()[0]}
  if error is None:
    with open(timing, "w") as f:
      json.dump(wall, f)
  else:
    logging.warning("run %s failed: %s", run_dir, error)
  return {**summary, **wall, "error": error, "reused": False}


def _child_main(run_dir: str) -> None:
  """Entry point of an isolated run: lm.run on the config the parent wrote."""
  with open(os.path.join(run_dir, _INPUT_CONFIG)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  lm.run(config, run_dir)


def _plot_curves(path: str, names: Sequence[str], labels: Mapping[str, str],
                 best: Mapping[str, dict], curves: Mapping[str, dict]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
  for i, n in enumerate(names):
    if best[n]["lr"] is None:
      continue
    color = f"C{i}"
    label = f"{labels[n]}, lr {best[n]['lr']:.3g}"
    if curves[n]["train"]:
      ax_t.plot(*zip(*curves[n]["train"]), color=color, lw=1.2, label=label)
    if curves[n]["eval"]:
      ax_e.plot(*zip(*curves[n]["eval"]), "o-", color=color, label=label)
  for ax, title in ((ax_t, "train loss (per logged step)"), (ax_e, "eval loss")):
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  ax_e.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_sweep(path: str, names: Sequence[str], labels: Mapping[str, str],
                sweep: Mapping[str, Mapping[float, Optional[float]]]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, n in enumerate(names):
    pts = [(lr, v) for lr, v in sorted(sweep[n].items()) if _finite(v) is not None]
    if pts:
      ax.plot(*zip(*pts), "o-", color=f"C{i}", label=labels[n])
  ax.set_xscale("log")
  ax.set_xlabel("peak learning rate")
  ax.set_ylabel("final eval loss (nats / token)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _fmt(x: Any, spec: str = ".4f") -> str:
  v = _finite(x)
  return "n/a" if v is None else format(v, spec)


def _write_report(path: str, config: ml_collections.ConfigDict, names: Sequence[str],
                  labels: Mapping[str, str], best: Mapping[str, dict],
                  runs: Mapping[str, Mapping[float, dict]], total_s: float,
                  load: tuple[Sequence[float], Sequence[float]],
                  params: Optional[int]) -> None:
  b = config.base
  lines = [
      "# Optimizer comparison on the LM\n",
      f"Same model ({params if params is not None else '?'} parameters, d_model "
      f"{b.model.d_model}, {b.model.num_layers} layers), data ({b.data.source}, "
      f"batch {b.data.global_batch_size} x {b.data.seq_len} tokens), "
      f"{b.trainer.total_steps} steps, {b.schedule.name} schedule (warmup "
      f"{b.schedule.warmup_steps}), weight decay {b.optimizer.weight_decay}, gradient "
      f"clip {b.optimizer.grad_clip_norm} for every optimizer; the peak lr of each is "
      "the best of its grid by final eval loss.\n",
      "| optimizer | best peak lr | final eval loss | final train loss | eval accuracy "
      "| eval loss per lr | s / run |",
      "|---|---|---|---|---|---|---|",
  ]
  for n in names:
    by_lr = runs[n]
    grid = ", ".join(f"{lr:.3g}: {_fmt(r.get('eval_loss'))}" for lr, r in sorted(by_lr.items()))
    lr = best[n]["lr"]
    r = by_lr.get(lr, {}) if lr is not None else {}
    edge = {"low": " (lowest of grid)", "high": " (highest of grid)"}.get(best[n]["edge"], "")
    secs = [x["wall_s"] for x in by_lr.values() if "wall_s" in x]
    lines.append(
        f"| {labels[n]} | {'n/a' if lr is None else f'{lr:.3g}'}{edge} | "
        f"{_fmt(r.get('eval_loss'))} | {_fmt(r.get('train_loss'))} | "
        f"{_fmt(r.get('eval_accuracy'), '.3f')} | {grid} | "
        f"{_fmt(sum(secs) / len(secs) if secs else None, '.0f')} |")
  ranked = sorted((n for n in names if best[n]["eval_loss"] is not None),
                  key=lambda n: best[n]["eval_loss"])
  if ranked:
    lines.append("\nRanking by final eval loss: " + " < ".join(
        f"{labels[n]} ({best[n]['eval_loss']:.4f})" for n in ranked) + ".")
  edges = [labels[n] for n in names if best[n]["edge"]]
  if edges:
    lines.append(f"\nBest lr at the edge of the grid for: {', '.join(edges)}; their optimum "
                 "may lie outside the grid.")
  failed = [f"{labels[n]} lr {lr:.3g} ({r['error']})" for n in names
            for lr, r in sorted(runs[n].items()) if r.get("error")]
  if failed:
    lines.append("\nFailed runs: " + "; ".join(failed) + ".")
  lines.append("\nOptimizer settings (config.optimizers):\n")
  for n in names:
    o = config.optimizers[n]
    lines.append(f"- {labels[n]}: `{o.name}` {dict(o.get('kwargs', {}) or {})}")
  all_runs = [r for n in names for r in runs[n].values()]
  run_s = sum(r.get("wall_s", 0.0) for r in all_runs)
  reused = sum(bool(r.get("reused")) for r in all_runs)
  lines.append(
      f"\n{len(all_runs)} runs, {run_s / 60:.1f} min of run wall time in all (each run in "
      f"its own process, startup included); this invocation {total_s / 60:.1f} min"
      + (f", reusing {reused} finished run(s)" if reused else "")
      + f"; load average (1, 5, 15 min) at its start {tuple(round(x, 2) for x in load[0])}, "
      f"at its end {tuple(round(x, 2) for x in load[1])}.")
  lines.append("\nPlots: loss_curves.png (best lr of each optimizer), lr_sweep.png. "
               "Every run: runs/<optimizer>_lr<lr>/; all figures: results.json.")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  names = optimizer_names(config)
  grids = {n: learning_rates(config, n) for n in names}
  for n in names:  # fail fast on bad base / optimizer fields, before any training
    lm.validate(sub_config(config, n, grids[n][0]))
  labels = {n: str(config.optimizers[n].get("label", n) or n) for n in names}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  t0, load0 = time.perf_counter(), os.getloadavg()
  settings = [(n, lr) for n in names for lr in grids[n]]
  progress = progress_lib.Progress(len(settings), "optimizer comparison", every_s=0.0,
                                   unit="run")
  runs: dict[str, dict[float, dict]] = {n: {} for n in names}
  for n, lr in settings:
    result = _run_one(sub_config(config, n, lr),
                      os.path.join(workdir, "runs", run_dir_name(n, lr)),
                      isolate=bool(config.get("isolate", True)),
                      timeout_s=float(config.get("run_timeout_s", 3600.0)),
                      xla_flags=str(config.get("xla_flags", "") or ""))
    runs[n][lr] = result
    progress.update(1, skipped=bool(result.get("reused")), optimizer=n, lr=lr,
                    eval_loss=_finite(result.get("eval_loss")), run_s=round(result["wall_s"]))
  total_s = time.perf_counter() - t0
  load1 = os.getloadavg()

  best = {n: select_best({lr: r.get("eval_loss") for lr, r in runs[n].items()})
          for n in names}
  curves = {n: read_curves(os.path.join(workdir, "runs", run_dir_name(n, best[n]["lr"])))
            if best[n]["lr"] is not None else {"train": [], "eval": []} for n in names}

  # Top-level metrics: the best run of each optimizer, step by step.
  for stale in ("metrics.jsonl", "tb"):
    p = os.path.join(workdir, stale)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.exists(p):
      os.remove(p)
  by_step: dict[int, dict[str, float]] = {}
  for n in names:
    for kind in ("train", "eval"):
      for step, v in curves[n][kind]:
        by_step.setdefault(step, {})[f"{n}/{kind}_loss"] = v
  writer = metrics_lib.MetricWriter(workdir)
  for step in sorted(by_step):
    writer.write(step, by_step[step])
  writer.close()

  _plot_curves(os.path.join(workdir, "loss_curves.png"), names, labels, best, curves)
  _plot_sweep(os.path.join(workdir, "lr_sweep.png"), names, labels,
              {n: {lr: r.get("eval_loss") for lr, r in runs[n].items()} for n in names})
  params = next((r.get("params") for n in names for r in runs[n].values()
                 if r.get("params") is not None), None)
  _write_report(os.path.join(workdir, "report.md"), config, names, labels, best, runs,
                total_s, (load0, load1), params)

  summary: dict[str, Any] = {
      "total_s": total_s, "load_start": load0, "load_end": load1, "params": params,
      "runs_wall_s": sum(r.get("wall_s", 0.0) for n in names for r in runs[n].values())}
  for n in names:
    summary[f"{n}/best_lr"] = best[n]["lr"]
    summary[f"{n}/eval_loss"] = best[n]["eval_loss"]
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"summary": summary, "best": best,
               "runs": {n: {str(lr): r for lr, r in runs[n].items()} for n in names}},
              f, indent=2, default=str)
  logging.info("optimizer comparison: %s", summary)
  return summary


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  _child_main(sys.argv[1])
