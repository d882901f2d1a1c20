"""The in-process runner: every curation stage as Python loops over shards,
in a pool of `config.workers` processes (all cores by default).

Stage A filters the shards in parallel, one shard per task. Stage B reads
each shard's surviving documents in parallel (exact-hash keys, MinHash
signatures, n-gram counts), then links exact and near duplicates and runs the
order-dependent Bloom pass here, in canonical order. Stage C trains (or
loads) the classifier here and scores shards in parallel; stage D writes shards
in parallel. A task's result depends only on its shard and the files before
it, and everything order-dependent runs here in canonical order, so any
number of workers writes the same bytes (workers=1 runs every task in this
process). All the work is done by `stages`; this module orders it, reports
progress (within a shard, by input bytes read) and fires the crash hook that
the resume tests use.

Workers are started with "spawn" (a clean interpreter: forking a process
that holds JAX's or Beam's threads can deadlock).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import queue as queue_lib
import sys
import time
from typing import Any, Callable, Iterator, Optional

from data_pipelines.curation import dedup
from data_pipelines.curation import stages
from data_pipelines.curation import stats as cstats

clock = stages.clock
REPORT_EVERY_S = 0.5   # how often a worker sends its position inside a shard

# Where a task's in-shard progress goes: in a worker process, the pool's queue;
# in this process (workers=1), the stage's Progress.
_sink: Optional[Callable[[tuple[str, int, int]], None]] = None


def _init_worker(queue) -> None:
  global _sink
  _sink = queue.put


def _reporter(key: str) -> stages.Report:
  """report(docs, bytes) that forwards at most every REPORT_EVERY_S seconds."""
  last = [-float("inf")]

  def report(docs: int, nbytes: int) -> None:
    now = time.perf_counter()
    if _sink is not None and now - last[0] >= REPORT_EVERY_S:
      last[0] = now
      _sink((key, docs, nbytes))
  return report


def _in_worker(fn: Callable, *args) -> tuple[Any, list[str]]:
  """Runs a task in a worker process: (its result, the lines it logged), so
  the parent prints them in the order the shards finish."""
  logs: list[str] = []
  stages.capture_logs(logs)
  try:
    return fn(*args), logs
  finally:
    stages.capture_logs(None)


# ----------------------------------------------------------------------------
# Tasks (module-level functions: they run in worker processes).

def _filter_task(ctx: stages.Context, shard: stages.Shard) -> dict:
  return stages.filter_shard(ctx, shard, _reporter(shard.key))


def _dedup_task(ctx: stages.Context, key: str, exact_on: bool, minhash_on: bool,
                bloom_ngram: int) -> dict:
  """One shard's surviving docs -> exact keys, bytes, MinHash signatures and
  Bloom n-gram counts (every doc: which are duplicates is known only globally)."""
  c = ctx.cfg("dedup").dedup.minhash
  mh = dedup.make_minhasher(c.num_perm, c.ngram, c.seed) if minhash_on else None
  out: dict[str, Any] = {"order": [], "exact": [], "nbytes": [], "sigs": [], "ngrams": [],
                         "t_exact": 0.0, "t_sig": 0.0}
  for d in stages.read_filtered(ctx.paths, key):
    out["order"].append(d["order"])
    out["nbytes"].append(stages.nbytes(d["text"]))
    t0 = clock()
    if exact_on:
      out["exact"].append(dedup.exact_key(d["text"]))
    t1 = clock()
    if mh is not None:
      out["sigs"].append(dedup.signature(mh, dedup.shingles(d["text"], c.ngram)))
    t2 = clock()
    if bloom_ngram:
      out["ngrams"].append(dedup.count_ngrams(d["text"], bloom_ngram))
    out["t_exact"] += t1 - t0
    out["t_sig"] += t2 - t1
  return out


def _score_task(ctx: stages.Context, key: str, decisions: dict, model_path: str,
                label: str) -> dict:
  t0 = clock()
  scored = list(stages.score_docs(stages.deduped_docs(ctx.paths, key, decisions), model_path, label))
  return {"scored": scored, "seconds": clock() - t0}


def _write_task(ctx: stages.Context, key: str, decisions: dict, scores: Optional[dict],
                qmeta: Optional[dict]) -> dict:
  return stages.write_output_shard(ctx, key, decisions, scores, qmeta)


def _size(path: str) -> int:
  return os.path.getsize(path) if os.path.exists(path) else 0


class Runner:
  """Runs the stages of one run (see `pipeline.run`): per-shard tasks in a pool
  of min(ctx.workers, shards) spawned processes, created on first use and kept
  for every stage (none when ctx.workers == 1 or there is one shard: the tasks
  then run in this process); the global steps in this process."""

  def __init__(self, ctx: stages.Context):
    self.ctx = ctx
    self._pool: Optional[cf.ProcessPoolExecutor] = None
    self._queue = None

  # -- the pool -----------------------------------------------------------
  def _executor(self) -> Optional[cf.ProcessPoolExecutor]:
    if self.ctx.workers <= 1 or len(self.ctx.shards) <= 1:
      return None
    if self._pool is None:
      mp = multiprocessing.get_context("spawn")
      self._queue = mp.Queue()
      self._pool = cf.ProcessPoolExecutor(max_workers=min(self.ctx.workers, len(self.ctx.shards)),
                                          mp_context=mp, initializer=_init_worker,
                                          initargs=(self._queue,))
    return self._pool

  def _kill_workers(self) -> None:
    """Before a simulated crash: no worker may finish a shard after it."""
    for proc in list(getattr(self._pool, "_processes", {}).values()):
      proc.kill()

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def _run(self, stage: str, tasks: list[tuple[str, int, Callable, tuple]],
           progress: Optional[cstats.Progress] = None) -> Iterator[tuple[str, Any]]:
    """Runs fn(*args) for each (shard key, input bytes, fn, args); yields
    (shard key, result) as tasks finish, after updating `progress` and firing
    the crash hook. Bigger shards start first (results do not depend on it)."""
    global _sink
    pool = self._executor()
    sizes = {key: nb for key, nb, _, _ in tasks}
    if pool is None:
      _sink = (lambda m: progress.update(*m)) if progress is not None else None
      try:
        for key, nb, fn, args in tasks:
          result = fn(*args)
          if progress is not None:
            progress.shard_done(key, _docs(result), nb)
          yield key, result
          stages.maybe_crash(stage)
      finally:
        _sink = None
      return
    futures = {pool.submit(_in_worker, fn, *args): key
               for key, _, fn, args in sorted(tasks, key=lambda t: -t[1])}
    pending = set(futures)
    try:
      while pending:
        done, pending = cf.wait(pending, timeout=REPORT_EVERY_S, return_when=cf.FIRST_COMPLETED)
        self._drain(progress, {futures[f] for f in pending})
        for f in sorted(done, key=lambda f: futures[f]):
          key = futures[f]
          try:
            result, logs = f.result()
          except Exception as e:
            raise RuntimeError(f"[curate:{stage}] shard {key} failed: {type(e).__name__}: {e}") from e
          for line in logs:
            print(line, file=sys.stderr, flush=True)
          if progress is not None:
            progress.shard_done(key, _docs(result), sizes[key])
          yield key, result
          stages.maybe_crash(stage, self._kill_workers)
    except BaseException:
      for f in pending:
        f.cancel()
      raise

  def _drain(self, progress: Optional[cstats.Progress], open_keys: set) -> None:
    while True:
      try:
        key, docs, nb = self._queue.get_nowait()
      except queue_lib.Empty:
        return
      if progress is not None and key in open_keys:
        progress.update(key, docs, nb)

  # -- the stages ---------------------------------------------------------
  def filter(self, todo: list[stages.Shard]) -> None:
    sizes = {s.key: _size(s.path) for s in todo}
    progress = cstats.Progress("filter", len(todo), sum(sizes.values()))
    tasks = [(s.key, sizes[s.key], _filter_task, (self.ctx, s)) for s in todo]
    for _ in self._run("filter", tasks, progress):
      pass

  def dedup(self) -> None:
    ctx = self.ctx
    paths, keys, cfg = ctx.paths, ctx.shard_keys, ctx.cfg("dedup")
    mc, bc = cfg.dedup.minhash, cfg.dedup.bloom
    bloom_ngram = int(bc.ngram) if bc.enabled and not int(bc.expected_ngrams) else 0
    sizes = {k: _size(paths.shard_file(paths.filtered, k, "docs")) for k in keys}
    progress = cstats.Progress("dedup", len(keys), sum(sizes.values()))
    tasks = [(k, sizes[k], _dedup_task, (ctx, k, bool(cfg.dedup.exact), bool(mc.enabled), bloom_ngram))
             for k in keys]
    parts = dict(self._run("dedup", tasks, progress))
    parts = [parts[k] for k in keys]   # canonical order from here on
    t_exact = sum(p["t_exact"] for p in parts)
    nbytes = {o: n for p in parts for o, n in zip(p["order"], p["nbytes"])}
    groups: dict[str, list[str]] = {}
    if cfg.dedup.exact:
      for p in parts:
        for o, k in zip(p["order"], p["exact"]):
          groups.setdefault(k, []).append(o)
    exact = stages.exact_drops(groups.values())
    t0 = clock()
    near: dict[str, str] = {}
    if mc.enabled:
      sigs = ((o, s) for p in parts for o, s in zip(p["order"], p["sigs"]) if o not in exact)
      near = dedup.minhash_clusters(sigs, mc)
    t_near = clock() - t0 + sum(p["t_sig"] for p in parts)
    st = stages.dedup_stats(exact, near, len(nbytes), nbytes, t_exact, t_near)
    drop = set(exact) | {o for o, r in near.items() if o != r}
    counted = (sum(n for p in parts for o, n in zip(p["order"], p["ngrams"]) if o not in drop)
               if bloom_ngram else None)
    stages.log("dedup", f"Bloom pass over {len(nbytes) - len(drop)} documents (one process)")
    bloom, ids, bst, info = stages.bloom_pass(ctx, drop, counted)
    stages.write_dedup(ctx, exact, near, bloom, ids, cstats.merge([st, bst]), info)
    stages.log("dedup", "done")

  def quality(self) -> None:
    ctx = self.ctx
    paths, keys, c = ctx.paths, ctx.shard_keys, ctx.cfg("quality").quality
    decisions = stages.load_decisions(paths)
    model_path = stages.quality_model_path(ctx)
    sizes = {k: _size(paths.shard_file(paths.filtered, k, "docs")) for k in keys}
    progress = cstats.Progress("quality", len(keys), sum(sizes.values()))
    decisions = stages.by_shard(decisions)
    tasks = [(k, sizes[k], _score_task, (ctx, k, decisions.get(k, {}), model_path, c.label))
             for k in keys]
    results = dict(self._run("quality", tasks, progress))
    scored = [s for k in keys for s in results[k]["scored"]]
    seconds = sum(r["seconds"] for r in results.values())   # scoring only, as in Beam
    stages.write_scores(ctx, [(o, s) for o, s, _ in scored], seconds, sum(b for _, _, b in scored))
    stages.log("quality", "done")

  def write(self, todo: list[str]) -> None:
    ctx = self.ctx
    paths = ctx.paths
    decisions = stages.load_decisions(paths)
    quality_on = ctx.cfg("write").quality.enabled
    scores, qmeta = stages.load_scores(paths) if quality_on else (None, None)
    sizes = {k: _size(paths.shard_file(paths.filtered, k, "docs")) for k in todo}
    progress = cstats.Progress("write", len(todo), sum(sizes.values()))
    decisions, shard_scores = stages.by_shard(decisions), stages.by_shard(scores)
    tasks = [(k, sizes[k], _write_task, (ctx, k, decisions.get(k, {}),
                                         shard_scores.get(k, {}) if scores is not None else None,
                                         qmeta))
             for k in todo]
    for _ in self._run("write", tasks, progress):
      pass


def _docs(result) -> int:
  """Documents a task handled, from its result (stats dict or scored list)."""
  if isinstance(result, dict):
    if "scored" in result:
      return len(result["scored"])
    if "order" in result:
      return len(result["order"])
    for step in ("read", "write"):
      if step in result:
        return result[step]["in"]
  return 0
