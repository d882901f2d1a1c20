"""Runner: Pareto frontiers of sparse parity learning (Edelman et al., NeurIPS 2023).

"Pareto Frontiers in Neural Feature Learning: Data, Compute, Width, and Luck".
`run(config, workdir) -> dict` runs one of three experiments (config.experiment;
configs in `experiments/parity/parity_config.py`):

* "frontier": the (n, k) offline sparse parity grid over training samples m x
  width r x init (dense or s-sparse) x seeds. Every cell reports P(success)
  (test accuracy >= trainer.success_acc within trainer.max_steps minibatch
  steps) with Wilson 95% bands, and the median steps to success. The paper's
  claims: P(success) rises with width at fixed m (width is parallel search for
  "lottery ticket" neurons), and sparse init succeeds with fewer samples than
  dense at the same width.
* "lottery": train wide sparse-init nets, keep each net's top-K neurons by
  ||(w_i, b_i)|| ||a_i||, rewind them to their initial weights and retrain the
  width-K subnet; the control retrains K random neurons of the same init.
* "tabular": wide sparse-init MLPs vs dense-init MLPs vs random forests on
  scikit-learn's shipped classification sets, also with appended Gaussian noise
  features, at several training-set fractions (tables of test accuracy).

Each writes metrics.jsonl (framework.metrics.MetricWriter), results.json (per
run), PNG plots and report.md into workdir. All seeds / sample sizes / inits of
one width train as one population (`experiments.parity.parity_sweep.sweep` on
`framework.population`: the common step vmapped over runs, member axis
sharded over the mesh, through the common loop).
"""
from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Dict

import ml_collections
import numpy as np

from data_pipelines import parity
from experiments.parity import parity_config as config_lib
from experiments.parity import frontier_plots as plots
from experiments.parity import parity_analysis as analysis
from experiments.parity import parity_sweep as ps
from experiments.parity import tabular
from framework import config as framework_config
from framework import mesh as mesh_lib
from framework.metrics import MetricWriter
from framework.progress import Progress


def default_config() -> ml_collections.ConfigDict:
  """The schema of this runner's configs (every variant has these keys)."""
  return config_lib.get_config()


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  framework_config.check_keys(config, default_config())
  os.makedirs(workdir, exist_ok=True)
  experiments = {"frontier": run_frontier, "lottery": run_lottery, "tabular": run_tabular}
  if config.experiment not in experiments:
    raise ValueError(f"unknown experiment {config.experiment!r}; choose from "
                     f"{sorted(experiments)}")
  return experiments[config.experiment](config, workdir)


# --------------------------------------------------------------------------
# Shared helpers.


def _init_name(s: int, n: int) -> str:
  return "dense" if s in (0, n) else f"sparse s={s}"


def _init_key(name: str) -> str:
  """'sparse s=4' -> 'sparse4' (a metric-name friendly init name)."""
  return name.replace(" s=", "")


def _load() -> str:
  one, five, _ = os.getloadavg()
  return f"{one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def _seeds(config, count: int) -> list:
  return list(range(int(config.seed), int(config.seed) + int(count)))


def _parity_data(pc, seeds, max_m):
  pd = parity.seed_datasets(pc.n, pc.k, max_m, pc.num_test, seeds)
  return pd, ps.SweepData(pd.x_train, pd.y_train, pd.x_test, pd.y_test)


def _write_json(path, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _write_report(workdir, lines):
  with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def _recipe(config) -> str:
  oc, tc = config.optimizer, config.trainer
  return (f"{oc.name.upper()} lr {config.schedule.peak_lr}, batch {tc.batch_size}, "
          f"{config.model.loss} loss, weight decay {oc.weight_decay}")


# --------------------------------------------------------------------------
# Frontier grid.


def run_frontier(config, workdir) -> Dict[str, Any]:
  pc, gc, tc = config.parity, config.grid, config.trainer
  mesh = mesh_lib.create_mesh(dict(config.mesh.shape))
  seeds = _seeds(config, gc.num_seeds)
  samples = sorted(int(m) for m in gc.num_samples)
  widths = [int(w) for w in gc.widths]
  sparsities = [int(s) if int(s) else pc.n for s in gc.sparsities]
  evals_per_width = -(-int(tc.max_steps) // int(tc.eval_every))
  _, data = _parity_data(pc, seeds, max(samples))
  writer = MetricWriter(workdir)
  load_start = _load()
  progress = Progress(len(widths) * evals_per_width, "frontier", unit="evals")
  records, timings = [], {}
  t_all = time.perf_counter()
  for width in widths:
    combos = list(itertools.product(samples, sparsities, range(len(seeds))))
    m_arr = np.array([c[0] for c in combos])
    s_arr = np.array([c[1] for c in combos])
    d_arr = np.array([c[2] for c in combos])
    seed_arr = np.array(seeds)[d_arr]
    # Same init for every m of a (seed, init): the m axis is a paired comparison.
    params0 = ps.init_batch(ps.run_seeds(seed_arr, 0, width, s_arr), pc.n, width, s_arr,
                            bias_scale=config.model.bias_scale,
                            out_scale=config.model.out_scale)
    runs = ps.Runs(d_arr, m_arr, ps.run_seeds(seed_arr, 1, m_arr))
    evals = [0]

    def on_eval(step, ids, accs, width=width, evals=evals, total=len(combos)):
      evals[0] += 1
      writer.write(step, {f"frontier/w{width}/live_runs": len(ids),
                          f"frontier/w{width}/mean_live_test_acc": float(np.mean(accs)),
                          f"frontier/w{width}/done_fraction": 1 - len(ids) / total})
      progress.update(1, width=width, live=len(ids))

    t0 = time.perf_counter()
    res = ps.sweep(config, data, params0, runs, mesh=mesh, on_eval=on_eval)
    timings[width] = time.perf_counter() - t0
    progress.update(evals_per_width - evals[0], width=width, live=0)
    for j in range(len(combos)):
      records.append(dict(width=width, m=int(m_arr[j]), init=_init_name(int(s_arr[j]), pc.n),
                          sparsity=int(s_arr[j]), seed=int(seed_arr[j]),
                          success=bool(res.success[j]),
                          steps_to_success=int(res.steps_to_success[j]),
                          steps_run=int(res.steps_run[j]),
                          final_test_acc=float(res.test_acc[j]),
                          best_test_acc=float(res.best_test_acc[j]),
                          train_loss=float(res.train_loss[j])))
  total_time = time.perf_counter() - t_all
  load_end = _load()

  inits = [_init_name(s, pc.n) for s in sparsities]
  cells, prob, med = analysis.frontier_grids(records, inits, widths, samples)
  for j, m in enumerate(samples):
    writer.write(m, {f"cell/{_init_key(i)}/w{w}/success_prob": prob[i][a, j]
                     for i in inits for a, w in enumerate(widths)})
  writer.close()

  title = f"({pc.n}, {pc.k}) sparse parity, {len(seeds)} seeds per cell"
  plots.plot_success_vs_samples(
      os.path.join(workdir, "frontier_success.png"), samples,
      {(i, w): (np.array([cells[(i, w, m)][0] for m in samples]),
                np.array([cells[(i, w, m)][1] for m in samples]))
       for i in inits for w in widths}, title=title)
  plots.plot_frontier_heatmap(os.path.join(workdir, "frontier_heatmap.png"), widths,
                              samples, prob, title=title)
  plots.plot_median_steps(os.path.join(workdir, "frontier_steps.png"), samples, med,
                          max_steps=int(tc.max_steps), title=title)
  _write_json(os.path.join(workdir, "results.json"),
              dict(config=config.to_dict(), records=records, timings_s=timings,
                   total_s=total_time, load_start=load_start, load_end=load_end))

  findings = analysis.frontier_findings(cells, med, inits, widths, samples)
  rows = [[i, str(w)] + [analysis.fmt_cell(*cells[(i, w, m)]) for m in samples]
          for i, w in itertools.product(inits, widths)]
  steps_rows = [[i, str(w)] + [("-" if np.isnan(v) else f"{v:.0f}") for v in med[(i, w)]]
                for i, w in itertools.product(inits, widths)]
  header = ["init", "width"] + [f"m={m}" for m in samples]
  _write_report(workdir, [
      f"# Pareto frontier: ({pc.n}, {pc.k}) offline sparse parity",
      "",
      "Edelman, Goel, Kakade, Malach, Zhang, *Pareto Frontiers in Neural Feature "
      "Learning: Data, Compute, Width, and Luck* (NeurIPS 2023), at laptop scale.",
      "",
      f"Two-layer ReLU MLP f(x) = sum_i a_i relu(<w_i, x> + b_i), x uniform on "
      f"{{+-1}}^{pc.n}, y = product of {pc.k} hidden coordinates. Each seed draws its own "
      f"support, a training pool of {max(samples)} points (a run with m samples uses the "
      f"first m) and a fresh test set of {pc.num_test}. Init: dense w_i ~ N(0, I/n), or "
      f"s-sparse (s random coordinates per neuron, N(0, 1/s) on them). Training: "
      f"{_recipe(config)}, at most {tc.max_steps} steps. **Success**: test accuracy "
      f">= {tc.success_acc} at an evaluation (every {tc.eval_every} steps).",
      "",
      f"Grid: widths {widths} x m {samples} x inits {inits} x {len(seeds)} seeds = "
      f"{len(records)} runs, one population per width. Runtime {total_time:.0f} s "
      f"({', '.join(f'width {w}: {t:.0f} s' for w, t in timings.items())}) on "
      f"{mesh.devices.size} device(s); load average at start {load_start}, at end "
      f"{load_end}.",
      "",
      "## Success probability (k/N) [Wilson 95%] per cell",
      "",
      analysis.as_table(header, rows),
      "",
      "## Median steps to success (- : fewer than half succeeded)",
      "",
      analysis.as_table(header, steps_rows),
      "",
      "## Findings",
      "",
      *[f"- {f}" for f in findings],
      "",
      "Plots: `frontier_success.png` (P(success) vs m with Wilson bands), "
      "`frontier_heatmap.png` (the grid; cyan = 0.5 contour), `frontier_steps.png`.",
  ])
  summary = {"runs": len(records), "total_s": round(total_time, 1),
             "timings_s": {str(w): round(t, 1) for w, t in timings.items()},
             "load_start": load_start, "load_end": load_end}
  for i in inits:
    for a, w in enumerate(widths):
      summary[f"{i}/w{w}"] = [round(float(p), 2) for p in prob[i][a]]
  return summary


# --------------------------------------------------------------------------
# Lottery tickets.


def _median_steps(res: ps.SweepResult) -> str:
  v = analysis.median_steps(res.success, res.steps_to_success)
  return "-" if np.isnan(v) else f"{v:.0f}"


def run_lottery(config, workdir) -> Dict[str, Any]:
  pc, lc, tc = config.parity, config.lottery, config.trainer
  mesh = mesh_lib.create_mesh(dict(config.mesh.shape))
  seeds = _seeds(config, lc.num_seeds)
  pd, data = _parity_data(pc, seeds, lc.num_samples)
  writer = MetricWriter(workdir)
  load_start = _load()
  t0 = time.perf_counter()
  d_arr = np.arange(len(seeds))
  s = int(lc.sparsity) or pc.n
  params0 = ps.init_batch(ps.run_seeds(seeds, 0, lc.width, s), pc.n, lc.width,
                          np.full(len(seeds), s), bias_scale=config.model.bias_scale,
                          out_scale=config.model.out_scale)
  runs = ps.Runs(d_arr, np.full(len(seeds), lc.num_samples), ps.run_seeds(seeds, 1))
  full = ps.sweep(config, data, params0, runs, mesh=mesh, keep_params=True)
  t_full = time.perf_counter() - t0
  writer.write(0, {"lottery/full_success": float(full.success.mean())})
  results = {"full": dict(success=full.success.tolist(),
                          steps=full.steps_to_success.tolist(), time_s=t_full)}
  bars_labels, bars_k, bars_n = [f"full (width {lc.width})"], [int(full.success.sum())], \
      [len(seeds)]
  rows = [[f"full net, width {lc.width}",
           analysis.fmt_cell(int(full.success.sum()), len(seeds)), _median_steps(full), "-",
           "-", f"{pc.k * s / pc.n:.2f} (expected)"]]
  for keep in lc.keep:
    t1 = time.perf_counter()
    lt = ps.lottery_ticket(config, data, params0, full.params, runs, int(keep),
                           supports=pd.support, seed=int(keep), mesh=mesh)
    dt = time.perf_counter() - t1
    results[f"keep{keep}"] = dict(
        ticket_success=lt.ticket.success.tolist(),
        ticket_steps=lt.ticket.steps_to_success.tolist(),
        random_success=lt.random.success.tolist(),
        random_steps=lt.random.steps_to_success.tolist(),
        pruned_acc=lt.pruned_acc.tolist(), lucky_in_ticket=lt.lucky_in_ticket.tolist(),
        lucky_total=lt.lucky_total.tolist(), ticket_overlap=lt.ticket_overlap.tolist(),
        random_overlap=lt.random_overlap.tolist(), time_s=dt)
    writer.write(int(keep), {"lottery/ticket_success": float(lt.ticket.success.mean()),
                             "lottery/random_success": float(lt.random.success.mean()),
                             "lottery/pruned_acc": float(lt.pruned_acc.mean())})
    rows.append([f"top-{keep} ticket, rewound + retrained",
                 analysis.fmt_cell(int(lt.ticket.success.sum()), len(seeds)),
                 _median_steps(lt.ticket), f"{lt.pruned_acc.mean():.3f}",
                 f"{lt.lucky_in_ticket.sum()} of {lt.lucky_total.sum()}",
                 f"{lt.ticket_overlap.mean():.2f}"])
    rows.append([f"random {keep} neurons, retrained",
                 analysis.fmt_cell(int(lt.random.success.sum()), len(seeds)),
                 _median_steps(lt.random), "-", "-", f"{lt.random_overlap.mean():.2f}"])
    bars_labels += [f"top-{keep} ticket", f"random {keep}"]
    bars_k += [int(lt.ticket.success.sum()), int(lt.random.success.sum())]
    bars_n += [len(seeds), len(seeds)]
  total = time.perf_counter() - t0
  load_end = _load()
  writer.close()
  plots.plot_bars(os.path.join(workdir, "lottery.png"), bars_labels, bars_k, bars_n,
                  title=f"({pc.n},{pc.k}) parity, m={lc.num_samples}, s={s}")
  _write_json(os.path.join(workdir, "results.json"),
              dict(config=config.to_dict(), results=results, total_s=total,
                   load_start=load_start, load_end=load_end))
  _write_report(workdir, [
      f"# Lottery tickets in sparse-init MLPs: ({pc.n}, {pc.k}) parity",
      "",
      f"{len(seeds)} seeds; width {lc.width}, s = {s} sparse init, m = {lc.num_samples} "
      f"training samples, {_recipe(config)}, <= {tc.max_steps} steps, success = test acc "
      f">= {tc.success_acc}. A ticket is each net's top-K neurons by "
      "||(w_i, b_i)|| |a_i| at the end of training, rewound to their initial weights "
      "and retrained alone (same data and minibatch order); the control is K random "
      "neurons of the same initial net. 'Pruned acc' is the trained net cut to its "
      "top-K without retraining. 'Lucky' neurons are those whose initial support "
      "contains the hidden support S; 'overlap' is |supp(w_i^0) & S| averaged over the "
      f"subnet's neurons (k s / n = {pc.k * s / pc.n:.2f} for a random neuron).",
      "",
      analysis.as_table(["network", "P(success) [Wilson 95%]", "median steps", "pruned acc",
                         "lucky neurons in tickets / in nets",
                         "mean initial overlap with S"], rows),
      "",
      f"Runtime {total:.0f} s (full nets {t_full:.0f} s) on {mesh.devices.size} device(s); "
      f"load average at start {load_start}, at end {load_end}.",
      "",
      "Plot: `lottery.png`.",
  ])
  summary = {"full_success": float(full.success.mean()), "total_s": round(total, 1)}
  for keep in lc.keep:
    r = results[f"keep{keep}"]
    summary[f"ticket{keep}_success"] = float(np.mean(r["ticket_success"]))
    summary[f"random{keep}_success"] = float(np.mean(r["random_success"]))
    summary[f"ticket{keep}_overlap"] = float(np.mean(r["ticket_overlap"]))
  return summary


# --------------------------------------------------------------------------
# Tabular.


def run_tabular(config, workdir) -> Dict[str, Any]:
  tc = config.tabular
  if config.model.loss != "xent":
    raise ValueError("the tabular experiment needs config.model.loss='xent' "
                     "(use the 'tabular' config variant)")
  mesh = mesh_lib.create_mesh(dict(config.mesh.shape))
  seeds = _seeds(config, tc.num_seeds)
  fractions = [float(f) for f in tc.fractions]
  writer = MetricWriter(workdir)
  load_start = _load()
  t0 = time.perf_counter()
  records = []
  progress = Progress(len(tc.datasets) * len(tc.noise_factors), "tabular", unit="sets")
  for name in tc.datasets:
    x_raw, y = tabular.load_tabular(name)
    num_classes = int(y.max()) + 1
    for factor in tc.noise_factors:
      label = name if not factor else f"{name}+{factor}d noise"
      x = x_raw if not factor else tabular.add_noise_features(
          x_raw, int(factor) * x_raw.shape[1], seed=1234)
      d = x.shape[1]
      pools = list(itertools.product(range(len(seeds)), range(len(fractions))))
      splits = [tabular.tabular_split(x, y, fractions[fi], seeds[si], tc.test_fraction)
                for si, fi in pools]
      t_rf = time.perf_counter()
      for (si, fi), split in zip(pools, splits):
        acc = tabular.random_forest_accuracy(split, seeds[si], tc.rf_trees)
        records.append(dict(dataset=label, model="random forest", fraction=fractions[fi],
                            m=len(split.y_train), seed=seeds[si], test_acc=acc))
      t_rf = time.perf_counter() - t_rf
      data, m = tabular.stack_splits(splits)
      s_sparse = min(int(tc.sparsity), d)
      inits = [("dense MLP", d), (f"sparse MLP (s={s_sparse})", s_sparse)]
      combos = list(itertools.product(range(len(pools)), range(len(inits))))
      p_arr = np.array([c[0] for c in combos])
      s_arr = np.array([inits[c[1]][1] for c in combos])
      seed_arr = np.array([seeds[pools[p][0]] for p in p_arr])
      params0 = ps.init_batch(ps.run_seeds(seed_arr, 0, s_arr), d, int(tc.width), s_arr,
                              num_outputs=num_classes, bias_scale=config.model.bias_scale,
                              out_scale=config.model.out_scale)
      runs = ps.Runs(p_arr, m[p_arr], ps.run_seeds(seed_arr, 1, p_arr))
      t_mlp = time.perf_counter()
      res = ps.sweep(config, data, params0, runs, mesh=mesh)
      t_mlp = time.perf_counter() - t_mlp
      for j, (p, ii) in enumerate(combos):
        si, fi = pools[p]
        records.append(dict(dataset=label, model=inits[ii][0].split(" (")[0],
                            fraction=fractions[fi], m=int(m[p]), seed=seeds[si],
                            test_acc=float(res.test_acc[j])))
      progress.update(1, set=label, rf_s=round(t_rf, 1), mlp_s=round(t_mlp, 1))
  total = time.perf_counter() - t0
  load_end = _load()

  models = analysis.TABULAR_MODELS
  stats, labels, wins = analysis.tabular_summary(records, fractions)
  table, curves, step = [], {}, 0
  for label in labels:
    curves[label] = {mo: (np.array([stats[(label, mo, f)][0] for f in fractions]),
                          np.array([stats[(label, mo, f)][1] for f in fractions]))
                     for mo in models}
    for f in fractions:
      ms = sorted({r["m"] for r in records if r["dataset"] == label and r["fraction"] == f})
      best = max(stats[(label, mo, f)][0] for mo in models)
      cells = []
      for mo in models:
        mean, std = stats[(label, mo, f)]
        txt = f"{mean:.3f} +- {std:.3f}"
        cells.append(f"**{txt}**" if mean >= best - 1e-9 else txt)
      table.append([label, f"{f:g}", "/".join(map(str, ms))] + cells)
      writer.write(step, {f"tabular/{label}/frac{f:g}/{mo}": stats[(label, mo, f)][0]
                          for mo in models})
      step += 1
  writer.close()
  plots.plot_tabular(os.path.join(workdir, "tabular.png"), fractions, curves)
  _write_json(os.path.join(workdir, "results.json"),
              dict(config=config.to_dict(), records=records, total_s=total,
                   load_start=load_start, load_end=load_end))
  _write_report(workdir, [
      "# Wide sparse-init MLPs vs random forests on scikit-learn's tabular sets",
      "",
      f"Data: {', '.join(tc.datasets)} (shipped with scikit-learn), and each with "
      f"{' / '.join(str(f) for f in tc.noise_factors if f)} x d appended N(0, 1) noise "
      f"features. Per seed a stratified {tc.test_fraction:g} test split; the training set "
      f"is a stratified fraction {fractions} of the rest (m per seed in the table), "
      "standardised with its own statistics. Models: random forest "
      f"({tc.rf_trees} trees, scikit-learn defaults), and two-layer ReLU MLPs of width "
      f"{tc.width} with dense or s = {tc.sparsity}-sparse first-layer init, "
      f"{_recipe(config)}, {config.trainer.max_steps} steps (no tuning, no early "
      f"stopping). Test accuracy mean +- std over {len(seeds)} seeds; best per row in bold.",
      "",
      analysis.as_table(["data set", "fraction", "m", *models], table),
      "",
      f"Sparse MLP vs random forest (rows, 0.005 tolerance): better in {wins['sparse>RF']}, "
      f"worse in {wins['sparse<RF']}, tied in {wins['tie']}. Sparse vs dense MLP: better in "
      f"{wins['sparse>dense']}, worse in {wins['sparse<dense']} (others within 0.005).",
      "",
      f"Runtime {total:.0f} s on {mesh.devices.size} device(s); load average at start "
      f"{load_start}, at end {load_end}.",
      "",
      "Plot: `tabular.png` (accuracy vs training fraction, +- 1 std bands).",
  ])
  return {"rows": len(table), "total_s": round(total, 1), **wins}
