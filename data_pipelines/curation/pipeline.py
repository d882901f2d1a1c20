"""The curation dispatcher: the plan of what is left, and the runner that does it.

  stages.py       the stages (filter, dedup, quality, write) as deterministic
                  functions of the files before them, and which files mark
                  a stage or shard done
  inprocess.py    a runner: every stage as Python loops over shards, in a
                  process pool (config.workers)
  beam_runner.py  a runner: every stage as an Apache Beam pipeline
  pipeline.py     this module: checks the config and the workdir, computes
                  `stages.plan` once, and hands each stage's part of it to the
                  chosen runner

Both runners import only `stages` (and the leaf modules it builds on), and
only this module imports a runner, so the package has no import cycle. The
plan is the one record of what is done; a runner never decides what to skip,
so a run killed under one runner resumes under the other.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from data_pipelines.curation import curation_config as config_lib
from data_pipelines.curation import inprocess
from data_pipelines.curation import io as cio
from data_pipelines.curation import stages
from data_pipelines.curation import stats as cstats

# Runner names accepted by `run` (and by the CLI's --runner): "direct" and
# "beam" both mean the Beam runner, on the DirectRunner unless beam_args say
# --runner=...
RUNNERS = ("inprocess", "direct", "beam")
CRASH_ENV = stages.CRASH_ENV
ConfigError = config_lib.ConfigError
output_files = stages.output_files


def check_runner(runner: str) -> None:
  if runner not in RUNNERS:
    raise ValueError(f"runner {runner!r} must be one of {', '.join(RUNNERS)}")


def make_runner(runner: str, ctx: stages.Context, beam_args: Optional[list[str]] = None):
  """The runner object for a name in RUNNERS (Beam is imported only when chosen)."""
  check_runner(runner)
  if runner == "inprocess":
    return inprocess.Runner(ctx)
  from data_pipelines.curation import beam_runner  # pylint: disable=g-import-not-at-top
  return beam_runner.Runner(ctx, beam_args or [])


def run(cfg, workdir: str, runner: str = "inprocess", beam_args: Optional[list[str]] = None,
        verbose: bool = True) -> dict:
  """Runs (or resumes) every stage; returns the merged stats (also in workdir/stats.json).

  The config is checked first (`config.check`: a ConfigError naming the field,
  before anything is read or written). Stages whose key is unchanged are not
  redone, so after a config change only the stages that read a changed field
  (and the stages after them) run again.
  """
  check_runner(runner)   # before anything is written into workdir
  cfg_json = stages.config_to_json(cfg)
  cfg = stages.config_from_json(cfg_json)
  config_lib.check(cfg)
  os.makedirs(workdir, exist_ok=True)
  ctx = stages.make_context(workdir, cfg)
  stages.prepare_workdir(ctx, cfg_json)
  t_start = time.perf_counter()
  todo = stages.plan(ctx)
  stage_wall: dict[str, float] = {}
  if not todo.empty:
    worker = make_runner(runner, ctx, beam_args)
    steps = [("filter", todo.filter, lambda: worker.filter(todo.filter)),
             ("dedup", todo.dedup, worker.dedup),
             ("quality", todo.quality, worker.quality),
             ("write", todo.write, lambda: worker.write(todo.write))]
    try:
      for name, needed, do in steps:
        if needed:
          t0 = time.perf_counter()
          do()
          stage_wall[name] = round(time.perf_counter() - t0, 3)
    finally:
      worker.close()
  st = stages.collect_stats(ctx)
  paths, keys = ctx.paths, ctx.shard_keys
  wall = time.perf_counter() - t_start
  summary = {"stats": st, "shards": len(keys), "runner": runner,
             "workers": ctx.workers if runner == "inprocess" else None,
             "wall_seconds": wall, "stage_wall_seconds": stage_wall,
             "docs_in": st.get("read", {}).get("in", 0),
             "docs_out": sum(cio.read_json(paths.shard_file(paths.output, k, "stats")).get("write", {}).get("out", 0)
                             for k in keys),
             "empty_inputs": stages.empty_inputs(ctx),
             "redone": {"filter": [s.key for s in todo.filter], "dedup": todo.dedup,
                        "quality": todo.quality, "write": todo.write}}
  cio.write_json(os.path.join(workdir, "stats.json"), summary)
  if verbose:
    print(cstats.table(st, wall, summary["workers"]), flush=True)
    for path in summary["empty_inputs"]:
      print(f"note: empty input file (no records): {path}", flush=True)
  return summary
