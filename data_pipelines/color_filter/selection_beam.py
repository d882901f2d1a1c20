"""The selection stage as an Apache Beam pipeline (DirectRunner here; the same
transforms run on Dataflow, Flink or Spark through pipeline options).

  pool rows (id -> (shard, row))  ----+
                                      +-- CoGroupByKey(id) -> (shard, id, s, row)
  scores (id -> s)  ------------------+
  global:    per input shard, its k best by (-s, id) (k from the global count,
             a side input), then the k best of those on one worker: exact,
             since each of the global k best is among its shard's k best;
  per_shard: per input shard, its own k_j best;
  then rows in the chosen set (a side input) -> output shard by hash(id) ->
  GroupByKey -> one file per shard, rows sorted by id.

Every decision is made by the functions of `selection` (top_k, ranks,
num_to_keep, output_shard, output_row, write_output_shard, finish), so this
runner and `selection.select` write the same bytes.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipelines.color_filter import selection as sel

_COUNT_FILE = "_num_candidates.json"


def _options(beam_args: Sequence[str]) -> PipelineOptions:
  args = list(beam_args)
  if not any(a.startswith("--runner") for a in args):
    args.append("--runner=DirectRunner")
  return PipelineOptions(args)


def _read_shard(item):
  index, path = item
  for row in sel.read_shard_rows(path):
    yield row["id"], (index, path, row)


def _join(item):
  doc_id, groups = item
  rows, scores = list(groups["row"]), list(groups["score"])
  if not rows:
    return   # a score of a document that is not in the pool
  if len(rows) > 1:
    raise sel.SelectionError(f"{rows[1][1]}: document id {doc_id!r} appears twice in the pool")
  index, path, row = rows[0]
  if not scores:
    raise sel.SelectionError(f"{path}: document {doc_id!r} has no score")
  yield index, doc_id, float(scores[0]), row


def _local_top(kv, n: int, tau: float):
  _, items = kv
  return sel.top_k(list(items), sel.num_to_keep(n, tau))


def _global_ranks(items, n: int, tau: float):
  return sel.ranks(sel.top_k(list(items), sel.num_to_keep(n, tau)))


def _shard_ranks(kv, tau: float):
  _, items = kv
  items = list(items)
  return sel.ranks(sel.top_k(items, sel.num_to_keep(len(items), tau)))


def _merge(dicts):
  out = {}
  for d in dicts:
    out.update(d)
  return out


def _keep(joined, chosen, num_shards: int):
  _, doc_id, _, row = joined
  if doc_id in chosen:
    rank, score = chosen[doc_id]
    yield sel.output_shard(doc_id, num_shards), sel.output_row(row, score, rank)


def _write_count(n: int, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, _COUNT_FILE), "w", encoding="utf-8") as f:
    json.dump({"n": int(n)}, f)


def select_beam(pool_shards: Sequence[str], scores: Mapping[str, float], out_dir: str, *,
                tau: float, method: str = "color", mode: str = "global",
                num_output_shards: int = 4, extra: Optional[Mapping] = None,
                beam_args: Sequence[str] = ()) -> dict:
  """`selection.select` as a Beam pipeline; same arguments, same files."""
  sel.check_params(method, tau, mode, num_output_shards)
  for path in pool_shards:
    if not os.path.exists(path):
      raise FileNotFoundError(f"pool shard not found: {path}")
  sel.prepare_output(out_dir)
  with beam.Pipeline(options=_options(beam_args)) as p:
    rows = (p | "Shards" >> beam.Create(list(enumerate(pool_shards)))
            | "Read" >> beam.FlatMap(_read_shard))
    score_pc = p | "Scores" >> beam.Create(sorted((str(k), float(v)) for k, v in scores.items()))
    joined = ({"row": rows, "score": score_pc}
              | "Join" >> beam.CoGroupByKey()
              | "Scored" >> beam.FlatMap(_join))
    candidates = joined | "Candidates" >> beam.Map(lambda j: (j[0], (j[1], j[2])))
    n = candidates | "Count" >> beam.combiners.Count.Globally()
    _ = n | "WriteCount" >> beam.Map(_write_count, out_dir)
    by_shard = candidates | "ByShard" >> beam.GroupByKey()
    if mode == "global":
      chosen = (by_shard
                | "LocalTop" >> beam.FlatMap(_local_top, beam.pvalue.AsSingleton(n), tau)
                | "AllLocal" >> beam.combiners.ToList()
                | "GlobalTop" >> beam.Map(_global_ranks, beam.pvalue.AsSingleton(n), tau))
    else:
      chosen = (by_shard
                | "ShardTop" >> beam.Map(_shard_ranks, tau)
                | "AllShards" >> beam.combiners.ToList()
                | "Merge" >> beam.Map(_merge))
    _ = (joined
         | "Keep" >> beam.FlatMap(_keep, beam.pvalue.AsSingleton(chosen), num_output_shards)
         | "ByOutputShard" >> beam.GroupByKey()
         | "Write" >> beam.Map(lambda kv: sel.write_output_shard(out_dir, kv[0], num_output_shards,
                                                                 list(kv[1]))))
  count_path = os.path.join(out_dir, _COUNT_FILE)
  with open(count_path, encoding="utf-8") as f:
    num = int(json.load(f)["n"])
  os.remove(count_path)
  return sel.finish(out_dir, method=method, tau=tau, mode=mode, num_candidates=num,
                    num_shards=num_output_shards, extra=extra)
