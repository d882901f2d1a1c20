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

  def __init__(self, cfg_json: str):
    self.cfg_json = cfg_json
    self.cfg = None
    self.res = None

  def setup(self):
    self.cfg = stages.config_from_json(self.cfg_json)
    self.res = stages.resources(self.cfg_json)

  def process(self, item):
    key, (i, rec) = item
    doc, attrs, st = stages.process_record(rec, stages.order_key(key, i), self.cfg, self.res)
    yield key, (i, doc, attrs, st)


def _read_shard(shard: stages.Shard):
  for i, rec in stages.shard_records(shard):
    yield shard.key, (i, rec)


def _write_filtered(item, paths: stages.Paths, cfg_json: str):
  key, results = item
  stages.write_filtered_shard(paths, key, list(results), stages.config_from_json(cfg_json))
  return key


def filter_stage(paths: stages.Paths, todo: list[stages.Shard], cfg, cfg_json: str, opts) -> None:
  with beam.Pipeline(options=opts) as p:
    _ = (p
         | "Shards" >> beam.Create(todo)
         | "Read" >> beam.FlatMap(_read_shard)
         | "Spread" >> beam.Reshuffle()
         | "Filter" >> beam.ParDo(_FilterDoFn(cfg_json))
         | "ByShard" >> beam.GroupByKey()
         | "Write" >> beam.Map(_write_filtered, paths, cfg_json))
  for shard in todo:   # a shard without records never reaches GroupByKey
    if not stages.filter_done(paths, shard.key):
      stages.filter_shard(paths, shard, cfg, cfg_json)


# ----------------------------------------------------------------------------
# Stage B.

def _exact_item(doc):
  t0 = clock()
  k = dedup.exact_key(doc["text"])
  return k, (doc["order"], clock() - t0)


class _SignatureDoFn(beam.DoFn):
  """doc -> (order, signature, seconds); skips exact duplicates."""

  def __init__(self, cfg_json: str):
    self.cfg_json = cfg_json

  def setup(self):
    c = stages.config_from_json(self.cfg_json).dedup.minhash
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


def _finish_and_write(_, paths, keys, cfg_json, exact, near_list, nbytes, seconds):
  """Single worker: Bloom pass in canonical order, then the dedup files."""
  cfg = stages.config_from_json(cfg_json)
  exact, nbytes, seconds = dict(exact), dict(nbytes), dict(seconds)
  near = near_list[0] if near_list else {}
  t_exact, t_near = seconds.get("exact", 0.0), seconds.get("minhash", 0.0)
  st = stages.dedup_stats(exact, near, len(nbytes), nbytes, t_exact, t_near)
  drop = set(exact) | {o for o, r in near.items() if o != r}
  bloom, ids, bst, info = stages.bloom_pass(paths, keys, drop, cfg)
  stages.write_dedup(paths, cfg, exact, near, bloom, ids, cstats.merge([st, bst]), info)
  return True


def dedup_stage(paths: stages.Paths, keys: list[str], cfg, cfg_json: str, opts) -> None:
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
      sigs = docs | "Signature" >> beam.ParDo(_SignatureDoFn(cfg_json), beam.pvalue.AsDict(exact))
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
             _finish_and_write, paths, keys, cfg_json, beam.pvalue.AsDict(exact), beam.pvalue.AsList(near),
             beam.pvalue.AsDict(nbytes), beam.pvalue.AsDict(times)))


# ----------------------------------------------------------------------------
# Stages C and D.

@functools.lru_cache(maxsize=2)
def _decisions(workdir: str):
  return stages.load_decisions(stages.Paths(workdir))


@functools.lru_cache(maxsize=2)
def _scores(workdir: str):
  return stages.load_scores(stages.Paths(workdir))


class _ScoreDoFn(beam.DoFn):
  def __init__(self, model_path: str, label: str):
    self.model_path, self.label = model_path, label

  def process(self, doc):
    t0 = clock()
    (order, score, nb), = stages.score_docs([doc], self.model_path, self.label)
    yield order, score, nb, clock() - t0


def _write_scores(rows, paths, cfg_json):
  rows = list(rows)
  stages.write_scores(paths, stages.config_from_json(cfg_json), [(o, s) for o, s, _, _ in rows],
                      sum(r[3] for r in rows), sum(r[2] for r in rows))


def quality_stage(paths: stages.Paths, keys: list[str], cfg, cfg_json: str, opts) -> None:
  model_path = stages.quality_model_path(paths, cfg)   # trains on the driver if needed
  with beam.Pipeline(options=opts) as p:
    _ = (p | "Keys" >> beam.Create(keys)
         | "Deduped" >> beam.FlatMap(lambda k: list(stages.deduped_docs(paths, k, _decisions(paths.workdir))))
         | "Spread" >> beam.Reshuffle()
         | "Score" >> beam.ParDo(_ScoreDoFn(model_path, cfg.quality.label))
         | "All" >> beam.combiners.ToList()
         | "Threshold" >> beam.Map(_write_scores, paths, cfg_json))


def _write_output(key, paths, cfg_json):
  cfg = stages.config_from_json(cfg_json)
  scores, meta = _scores(paths.workdir) if cfg.quality.enabled else (None, None)
  stages.write_output_shard(paths, key, cfg, _decisions(paths.workdir), scores, meta)
  return key


def write_stage(paths: stages.Paths, todo: list[str], cfg_json: str, opts) -> None:
  with beam.Pipeline(options=opts) as p:
    _ = (p | "Keys" >> beam.Create(todo) | "Spread" >> beam.Reshuffle()
         | "Write" >> beam.Map(_write_output, paths, cfg_json))


class Runner:
  """Runs the stages of one config as Beam pipelines (see `pipeline.run`)."""

  def __init__(self, cfg, cfg_json: str, beam_args: list[str]):
    self.cfg, self.cfg_json = cfg, cfg_json
    self.opts = _options(beam_args)

  def filter(self, paths: stages.Paths, todo: list[stages.Shard]) -> None:
    print(f"[curate:filter] beam: {len(todo)} shards", flush=True)
    filter_stage(paths, todo, self.cfg, self.cfg_json, self.opts)

  def dedup(self, paths: stages.Paths, keys: list[str]) -> None:
    print("[curate:dedup] beam", flush=True)
    dedup_stage(paths, keys, self.cfg, self.cfg_json, self.opts)

  def quality(self, paths: stages.Paths, keys: list[str]) -> None:
    print("[curate:quality] beam", flush=True)
    _decisions.cache_clear()   # this process may hold an earlier run's files
    quality_stage(paths, keys, self.cfg, self.cfg_json, self.opts)

  def write(self, paths: stages.Paths, todo: list[str]) -> None:
    _decisions.cache_clear()   # this process may hold an earlier run's files
    _scores.cache_clear()
    print(f"[curate:write] beam: {len(todo)} shards", flush=True)
    write_stage(paths, todo, self.cfg_json, self.opts)
