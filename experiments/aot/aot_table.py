r"""The AOT table: Llama-3 1B and 8B shapes on TPU slices, fsdp and fsdp x tensor.

  python -m experiments.aot.aot_table --models=1b,8b \
      --topologies=v5e-16,v5e-64,v5p-64,v5p-128 [--tensor=4] [--remat=full]
  python -m experiments.aot.aot_table --render     # the table from the results so far

For every (model, topology, mesh) cell it runs `tools.aot_compile.sweep` with
one mesh and one remat policy: the fewest micro-batches whose compiled step
fits the chip's HBM (starting from the analytic estimate's guess). Every
compile is appended to `experiments/aot/results.jsonl` as it finishes (a
killed run keeps what it did; cells already there are skipped), and the
table is rewritten to `experiments/aot/aot_table_compiled.md`.

Columns: the compiled per-device memory (argument + output - alias + temp)
next to the analytic estimate (params + optimizer + gradients + activations
+ batch, `tools.aot_compile.analytic_memory`), compiled FLOPs per step over
the model count (6 N tokens + attention + LM head), the collective bytes per
device, the step-time lower bound and MFU upper bound (`tools.aot_compile`'s
docstring), and the compile time on this host.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags

from experiments.configs import llama3_1b, llama3_8b
from tools import aot_compile

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results.jsonl")
TABLE = os.path.join(HERE, "aot_table_compiled.md")
MODELS = {"1b": llama3_1b.get_config, "8b": llama3_8b.get_config}

def _define_flags():
  """Flags exist only when this runs as a program, so importing it (tests) defines none."""
  global _MODELS, _TOPOLOGIES, _TENSOR, _REMAT, _RENDER, _EXTRAPOLATE
  _MODELS = flags.DEFINE_list("models", ["1b", "8b"], "Model shapes: 1b, 8b.")
  _TOPOLOGIES = flags.DEFINE_list("topologies", ["v5e-16", "v5e-64", "v5p-64", "v5p-128"],
                                  "TPU slices (accelerator types or gen:AxB[xC]).")
  _TENSOR = flags.DEFINE_integer("tensor", 4, "Tensor axis of the fsdp x tensor mesh.")
  _REMAT = flags.DEFINE_string("remat", "full", "Remat policy of every cell.")
  _RENDER = flags.DEFINE_bool("render", False, "Only rewrite the table from the results.")
  _EXTRAPOLATE = flags.DEFINE_list("extrapolate_from", [],
                                   "Two depths a,b: compile each cell at a and b layers and "
                                   "extrapolate (tools.aot_compile.extrapolate).")


def cell_key(model: str, topology: str, mesh: dict) -> str:
  return f"{model}|{topology}|{aot_compile.mesh_label(mesh)}"


def load_results(path: str = RESULTS) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _g(x: float) -> str:
  return f"{x / 2**30:.2f}"


def render(results: list[dict]) -> str:
  """Markdown: per cell the fewest micro-batches that fit (or the last try)."""
  cells: dict[str, list[dict]] = {}
  for r in results:
    cells.setdefault(r["cell"], []).append(r)
  lines = [
      "# AOT compilation of the Llama-3 shapes for TPU slices",
      "",
      "Made by `python -m experiments.aot.aot_table` (libtpu "
      f"{_libtpu_version()}, compiled on a 2-core CPU host, no TPU). Per cell: the "
      "fewest micro-batches whose compiled train step fits the HBM (remat `full`, AdamW, "
      "fp32 master weights and moments, bf16 compute, layers scanned). v5e-N counts chips; v4-N and "
      "v5p-N count TensorCores (two per chip): v5p-64 = 32 chips (2x4x4), v5p-128 = 64 "
      "chips (4x4x4). Memory in GiB per chip; compiled = argument + output - alias + "
      "temp; analytic = params + optimizer + gradients + activations + batch. FLOPs "
      "ratios over the model count (6 N tokens + attention + LM head): `XLA` = "
      "cost_analysis() (a scanned layer stack's body counted once, so about 1/L of the "
      "step with `model.scan_layers`), `traced` = the traced step's matmul FLOPs (scan "
      "bodies x length, unmasked attention, remat recompute). Step >= and "
      "MFU <= from max(FLOPs / peak, XLA cost model, collective bytes / ICI). "
      "`depths compiled`: `all` is the whole model; `2, 4` means the step was compiled "
      "with 2 and 4 layers and every compiled figure extrapolated linearly in the depth "
      "(`tools.aot_compile.extrapolate`; a compiler out-of-memory at a smaller depth means "
      "no fit).",
      "",
      "| model | slice | mesh | micro-batches | fits | compiled GiB | analytic GiB | HBM GiB "
      "| FLOPs ratio XLA | traced | collectives GiB | step >= ms | MFU <= | compile s "
      "| depths compiled |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  best: dict[tuple[str, str], dict] = {}
  for key, runs in cells.items():
    fitting = [r for r in runs if r["fits"]]
    pick = min(fitting, key=lambda r: r["num_microbatches"]) if fitting else max(
        runs, key=lambda r: r["num_microbatches"])
    model, topo, mesh = key.split("|")
    note = "" if pick["fits"] else " (" + ", ".join(
        f"mb {r['num_microbatches']}: {_g(r['memory'].get('total', 0))}" for r in runs) + ")"
    coll = sum(v["bytes"] for v in pick.get("collectives", {}).values())
    ratio = pick["flops_per_device"] * pick["devices"] / pick["model_flops_per_step"]
    traced = pick.get("traced_flops_per_step", float("nan")) / pick["model_flops_per_step"]
    compiled = pick["memory"].get("output")
    lines.append(
        f"| {model} | {topo} | {mesh} | {pick['num_microbatches']} | "
        f"{'yes' if pick['fits'] else 'no'}{note} | "
        f"{_g(pick['memory']['total']) if compiled else '>= ' + _g(pick['memory']['total'])} | "
        f"{_g(pick['analytic']['total'])} | {_g(pick['hbm_bytes'])} | "
        f"{ratio:.3f} | {traced:.3f} | {_g(coll)} | "
        f"{pick['step_time_lb_s'] * 1e3:.0f} | {pick['mfu_upper_bound']:.1%} | "
        f"{sum(r['compile_s'] for r in runs):.0f} | {_depths(pick)} |".replace("nan", "-"))
    if pick["fits"]:
      b = best.get((model, topo))
      if b is None or pick["step_time_lb_s"] < b["step_time_lb_s"]:
        best[(model, topo)] = dict(pick, mesh_label=mesh)
  if best:
    lines += ["", "Best mesh found per model and slice (smallest step-time bound that fits):", ""]
    for (model, topo), b in sorted(best.items()):
      lines.append(f"- {model} on {topo}: {b['mesh_label']}, {b['num_microbatches']} "
                   f"micro-batch(es), step >= {b['step_time_lb_s'] * 1e3:.0f} ms, "
                   f"MFU <= {b['mfu_upper_bound']:.1%}")
  return "\n".join(lines) + "\n"


def _depths(report: dict) -> str:
  """`all` for a full-depth compile, else the two depths it was extrapolated from."""
  note = report.get("note", "")
  for pattern in ("extrapolated from ", "already at "):
    if pattern in note:
      return note.split(pattern, 1)[1].split(" layers")[0].replace(" and ", ", ")
  return "all"


def _libtpu_version() -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version("libtpu")
  except Exception:  # pylint: disable=broad-except
    return "?"


def main(argv):
  del argv
  if not os.environ.get("JAX_PLATFORMS"):
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_platforms", "cpu")   # compiling needs no TPU attached
  if not _RENDER.value:
    done = {r["cell"] for r in load_results()}
    for model in _MODELS.value:
      config = MODELS[model]()
      config.model.remat = _REMAT.value
      for topology in _TOPOLOGIES.value:
        _, devices = aot_compile.topology_devices(topology)
        name = aot_compile.topology_name(topology)[1]
        n = len(devices)
        for mesh in (dict(data=1, fsdp=n, tensor=1),
                     dict(data=1, fsdp=n // _TENSOR.value, tensor=_TENSOR.value)):
          key = cell_key(model, topology, mesh)
          if key in done:
            continue
          print(f"{key}:", flush=True)
          start = time.time()
          reports, _ = aot_compile.sweep(
              config, devices, name, meshes=[mesh], remats=[_REMAT.value],
              depths=[int(d) for d in _EXTRAPOLATE.value],
              log=lambda s: print(s, flush=True))
          with open(RESULTS, "a") as f:
            for r in reports:
              f.write(json.dumps(dict(r.to_json(), cell=key, model=model), default=float)
                      + "\n")
          print(f"  cell done in {time.time() - start:.0f} s", flush=True)
          with open(TABLE, "w") as f:
            f.write(render(load_results()))
  with open(TABLE, "w") as f:
    f.write(render(load_results()))
  print(open(TABLE).read())


if __name__ == "__main__":
  _define_flags()
  app.run(main)
