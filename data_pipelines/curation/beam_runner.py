"""The curation stages as Apache Beam pipelines (DirectRunner here; the same
transforms run on Dataflow, Flink or Spark through pipeline options).

Stage A fans out per document (Reshuffle, then a ParDo with per-worker
resources) and groups back by shard to write. Stage B computes exact-hash
groups and MinHash LSH buckets with GroupByKey, builds clusters from the
bucket edges, then runs the order-dependent Bloom pass on one worker (as
DCLM's bff tool does). Stage C scores documents in parallel and fixes the
threshold globally; stage D writes shards in parallel. Every stage reuses
the functions of `stages` (the only curation module imported here besides
`dedup` and `stats`), so both runners write the same files.
"""
from __future__ import annotations

import functools

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipelines.curation import dedup
from data_pipelines.curation import stages
from data_pipelines.curation import stats as cstats

clock = stages.clock


def _options(beam_args: list[str]) -> PipelineOptions:
  args = list(beam_args)
  if not any(a.startswith("--runner") for a in args):
    args.append("--runner=DirectRunner")
  return PipelineOptions(args)


# ----------------------------------------------------------------------------
# Stage A.

class _FilterDoFn(beam.DoFn):
  """(shard key, (index, record)) -> (shard key, (index, doc, attrs, stats))."""

  def __init__(self, ctx: stages.Context):
    self.ctx = ctx
    self.cfg = None
    self.res = None

  def setup(self):
    self.cfg = self.ctx.cfg("filter")
    self.res = stages.resources(self.ctx.views["filter"])

  def process(self, item):
    key, (i, rec) = item
    doc, attrs, st = stages.process_record(rec, stages.order_key(key, i), self.cfg, self.res)
    yield key, (i, doc, attrs, st)


def _read_shard(shard: stages.Shard):
  for i, rec in stages.shard_records(shard):
    yield shard.key, (i, rec)


def _write_filtered(item, ctx: stages.Context):
  key, results = item
  stages.write_filtered_shard(ctx, key, list(results))
  return key


def filter_stage(ctx: stages.Context, todo: list[stages.Shard], opts) -> None:
  with beam.Pipeline(options=opts) as p:
    _ = (p
         | "Shards" >> beam.Create(todo)
         | "Read" >> beam.FlatMap(_read_shard)
         | "Spread" >> beam.Reshuffle()
         | "Filter" >> beam.ParDo(_FilterDoFn(ctx))
         | "ByShard" >> beam.GroupByKey()
         | "Write" >> beam.Map(_write_filtered, ctx))
  for shard in todo:   # a shard without records never reaches GroupByKey
    if not stages.filter_done(ctx, shard.key):
      stages.filter_shard(ctx, shard)


# ----------------------------------------------------------------------------
# Stage B.

def _exact_item(doc):
  t0 = clock()
  k = dedup.exact_key(doc["text"])
  return k, (doc["order"], clock() - t0)


class _SignatureDoFn(beam.DoFn):
  """doc -> (order, signature, seconds); skips exact duplicates."""

  def __init__(self, ctx: stages.Context):
    self.ctx = ctx

  def setup(self):
    c = self.ctx.cfg("dedup").dedup.minhash
    self.c = c
    self.mh = dedup.make_minhasher(c.num_perm, c.ngram, c.seed)

  def process(self, doc, exact):
    if doc["order"] in exact:
      return
    t0 = clock()
    sig = dedup.signature(self.mh, dedup.shingles(doc["text"], self.c.ngram))
    yield doc["order"], sig, clock() - t0


def _band_items(item, bands: int, rows: int):
  order, sig, _ = item
  for bk in dedup.band_keys(sig, bands, rows):
    yield bk, (order, sig)


def _finish_and_write(_, ctx, exact, near_list, nbytes, seconds):
  """Single worker: Bloom pass in canonical order, then the dedup files."""
  exact, nbytes, seconds = dict(exact), dict(nbytes), dict(seconds)
  near = near_list[0] if near_list else {}
  t_exact, t_near = seconds.get("exact", 0.0), seconds.get("minhash", 0.0)
  st = stages.dedup_stats(exact, near, len(nbytes), nbytes, t_exact, t_near)
  drop = set(exact) | {o for o, r in near.items() if o != r}
  bloom, ids, bst, info = stages.bloom_pass(ctx, drop)
  stages.write_dedup(ctx, exact, near, bloom, ids, cstats.merge([st, bst]), info)
  return True


def dedup_stage(ctx: stages.Context, opts) -> None:
  paths, keys, cfg = ctx.paths, ctx.shard_keys, ctx.cfg("dedup")
  mc = cfg.dedup.minhash
  with beam.Pipeline(options=opts) as p:
    docs = (p | "Keys" >> beam.Create(keys)
            | "ReadFiltered" >> beam.FlatMap(lambda k: list(stages.read_filtered(paths, k))))
    nbytes = docs | "Bytes" >> beam.Map(lambda d: (d["order"], stages.nbytes(d["text"])))
    if cfg.dedup.exact:
      keyed = docs | "ExactKey" >> beam.Map(_exact_item)
      exact = (keyed
               | "ExactGroup" >> beam.GroupByKey()
               | "ExactDrops" >> beam.FlatMap(
                   lambda kv: stages.exact_drops([[o for o, _ in kv[1]]]).items()))
      t_exact = keyed | "ExactTime" >> beam.Map(lambda kv: kv[1][1]) | "SumExact" >> beam.CombineGlobally(sum)
    else:
      exact = p | "NoExact" >> beam.Create([])
      t_exact = p | "NoExactTime" >> beam.Create([0.0])
    if mc.enabled:
      bands, rows = dedup.bands_rows(mc)
      sigs = docs | "Signature" >> beam.ParDo(_SignatureDoFn(ctx), beam.pvalue.AsDict(exact))
      edges = (sigs
               | "Bands" >> beam.FlatMap(_band_items, bands, rows)
               | "Buckets" >> beam.GroupByKey()
               | "Pairs" >> beam.FlatMap(lambda kv: list(dedup.bucket_pairs(list(kv[1]), mc.threshold,
                                                                             mc.verify))))
      near = (edges | "Edges" >> beam.combiners.ToList()
              | "Components" >> beam.Map(dedup.connected_components))
      t_near = sigs | "SigTime" >> beam.Map(lambda s: s[2]) | "SumSig" >> beam.CombineGlobally(sum)
    else:
      near = p | "NoNear" >> beam.Create([{}])
      t_near = p | "NoNearTime" >> beam.Create([0.0])
    times = ((t_exact | "TagE" >> beam.Map(lambda t: ("exact", t)),
              t_near | "TagM" >> beam.Map(lambda t: ("minhash", t)))
             | "Times" >> beam.Flatten())
    _ = (p | "Once" >> beam.Create([None])
         | "BloomAndWrite" >> beam.Map(
             _finish_and_write, ctx, beam.pvalue.AsDict(exact), beam.pvalue.AsList(near),
             beam.pvalue.AsDict(nbytes), beam.pvalue.AsDict(times)))


# ----------------------------------------------------------------------------
# Stages C and D.

@functools.lru_cache(maxsize=2)
def _decisions(workdir: str, dedup_key: str):
  del dedup_key   # part of the cache key: the files of another dedup run differ
  return stages.load_decisions(stages.Paths(workdir))


@functools.lru_cache(maxsize=2)
def _scores(workdir: str, quality_key: str):
  del quality_key
  return stages.load_scores(stages.Paths(workdir))


class _ScoreDoFn(beam.DoFn):
  def __init__(self, model_path: str, label: str):
    self.model_path, self.label = model_path, label

  def process(self, doc):
    t0 = clock()
    (order, score, nb), = stages.score_docs([doc], self.model_path, self.label)
    yield order, score, nb, clock() - t0


def _write_scores(rows, ctx):
  rows = list(rows)
  stages.write_scores(ctx, [(o, s) for o, s, _, _ in rows], sum(r[3] for r in rows),
                      sum(r[2] for r in rows))


def quality_stage(ctx: stages.Context, opts) -> None:
  paths = ctx.paths
  model_path = stages.quality_model_path(ctx)   # trains on the driver if needed
  with beam.Pipeline(options=opts) as p:
    _ = (p | "Keys" >> beam.Create(ctx.shard_keys)
         | "Deduped" >> beam.FlatMap(lambda k: list(stages.deduped_docs(
             paths, k, _decisions(paths.workdir, ctx.keys.dedup))))
         | "Spread" >> beam.Reshuffle()
         | "Score" >> beam.ParDo(_ScoreDoFn(model_path, ctx.cfg("quality").quality.label))
         | "All" >> beam.combiners.ToList()
         | "Threshold" >> beam.Map(_write_scores, ctx))


def _write_output(key, ctx):
  paths = ctx.paths
  scores, meta = (_scores(paths.workdir, ctx.keys.quality) if ctx.cfg("write").quality.enabled
                  else (None, None))
  stages.write_output_shard(ctx, key, _decisions(paths.workdir, ctx.keys.dedup), scores, meta)
  return key


def write_stage(ctx: stages.Context, todo: list[str], opts) -> None:
  with beam.Pipeline(options=opts) as p:
    _ = (p | "Keys" >> beam.Create(todo) | "Spread" >> beam.Reshuffle()
         | "Write" >> beam.Map(_write_output, ctx))


class Runner:
  """Runs the stages of one run as Beam pipelines (see `pipeline.run`)."""

  def __init__(self, ctx: stages.Context, beam_args: list[str]):
    self.ctx = ctx
    self.opts = _options(beam_args)

  def filter(self, todo: list[stages.Shard]) -> None:
    stages.log("filter", f"beam: {len(todo)} shards")
    filter_stage(self.ctx, todo, self.opts)

  def dedup(self) -> None:
    stages.log("dedup", "beam")
    dedup_stage(self.ctx, self.opts)

  def quality(self) -> None:
    stages.log("quality", "beam")
    _decisions.cache_clear()   # this process may hold an earlier run's files
    quality_stage(self.ctx, self.opts)

  def write(self, todo: list[str]) -> None:
    _decisions.cache_clear()   # this process may hold an earlier run's files
    _scores.cache_clear()
    stages.log("write", f"beam: {len(todo)} shards")
    write_stage(self.ctx, todo, self.opts)

  def close(self) -> None:
    pass
