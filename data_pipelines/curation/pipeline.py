"""The curation dispatcher: the plan of what is left, and the runner that does it.

  stages.py       the stages (filter, dedup, quality, write) as deterministic
                  functions of the files before them, and which files mark
                  a stage or shard done
  inprocess.py    a runner: every stage as a plain Python loop
  beam_runner.py  a runner: every stage as an Apache Beam pipeline
  pipeline.py     this module: checks the workdir, computes `stages.plan`
                  once, and hands each stage's part of it to the chosen runner

Both runners import only `stages` (and the leaf modules it builds on), and
only this module imports a runner, so the package has no import cycle. The
plan is the one record of what is done; a runner never decides what to skip,
so a run killed under one runner resumes under the other.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from data_pipelines.curation import inprocess
from data_pipelines.curation import io as cio
from data_pipelines.curation import stages
from data_pipelines.curation import stats as cstats

# Runner names accepted by `run` (and by the CLI's --runner): "direct" and
# "beam" both mean the Beam runner, on the DirectRunner unless beam_args say
# --runner=...
RUNNERS = ("inprocess", "direct", "beam")
CRASH_ENV = stages.CRASH_ENV
output_files = stages.output_files


def check_runner(runner: str) -> None:
  if runner not in RUNNERS:
    raise ValueError(f"runner {runner!r} must be one of {', '.join(RUNNERS)}")


def make_runner(runner: str, cfg, cfg_json: str, beam_args: Optional[list[str]] = None):
  """The runner object for a name in RUNNERS (Beam is imported only when chosen)."""
  check_runner(runner)
  if runner == "inprocess":
    return inprocess.Runner(cfg, cfg_json)
  from data_pipelines.curation import beam_runner  # pylint: disable=g-import-not-at-top
  return beam_runner.Runner(cfg, cfg_json, beam_args or [])


def run(cfg, workdir: str, runner: str = "inprocess", beam_args: Optional[list[str]] = None,
        verbose: bool = True) -> dict:
  """Runs (or resumes) every stage; returns the merged stats (also in workdir/stats.json)."""
  check_runner(runner)   # before anything is written into workdir
  os.makedirs(workdir, exist_ok=True)
  paths = stages.Paths(workdir)
  cfg_json = stages.config_to_json(cfg)
  cfg = stages.config_from_json(cfg_json)
  stages.check_workdir(paths, cfg_json)
  shards = stages.list_shards(cfg)
  keys = [s.key for s in shards]
  t_start = time.perf_counter()
  todo = stages.plan(paths, shards, cfg)
  if not todo.empty:
    worker = make_runner(runner, cfg, cfg_json, beam_args)
    if todo.filter:
      worker.filter(paths, todo.filter)
    if todo.dedup:
      worker.dedup(paths, keys)
    if todo.quality:
      worker.quality(paths, keys)
    if todo.write:
      worker.write(paths, todo.write)
  st = stages.collect_stats(paths, keys, cfg)
  summary = {"stats": st, "shards": len(keys), "runner": runner,
             "wall_seconds": time.perf_counter() - t_start,
             "docs_out": sum(cio.read_json(paths.shard_file(paths.output, k, "stats")).get("write", {}).get("out", 0)
                             for k in keys)}
  cio.write_json(os.path.join(workdir, "stats.json"), summary)
  if verbose:
    print(cstats.table(st), flush=True)
  return summary
