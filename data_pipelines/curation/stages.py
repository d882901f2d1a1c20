"""The curation stages, as deterministic functions of the files before them,
and the bookkeeping of which stages and shards are done.

  A. filter   (per input shard, per document): read -> extract -> URL filter ->
              modifiers -> language id -> Gopher quality/repetition rules ->
              RefinedWeb line modifiers + removed-words rule.
              workdir/filtered/<shard>.{jsonl.zst,attrs.jsonl.zst,stats.json}
  B. dedup    (global, in canonical document order): exact -> MinHash LSH ->
              Bloom-filter paragraph/document n-gram dedup.
              workdir/dedup/{decisions.jsonl.zst,clusters.jsonl.zst,stats.json}
  C. quality  (global): train or load the fastText classifier, score every
              surviving document, fix the threshold.
              workdir/quality/{model.bin,scores.jsonl.zst,threshold.json}
  D. write    (per shard): apply B and C, write the curated shard and its
              attribute side file.
              workdir/output/<shard>.{jsonl.zst,attrs.jsonl.zst,stats.json}

Every file is written atomically, and a stage (or shard) is done when its
key file, written last, holds the stage's key: a hash of the config fields
the stage reads (`STAGE_FIELDS`; a stage function sees only those, through
`Context.cfg(stage)`), of the keys of the stages before it, and for stage A of
the input file (path, format, size, mtime). A killed run redoes only
unfinished shards and stages; a config change redoes only the stages whose
fields (or whose inputs) changed. Each stage is a deterministic function of
the files before it, so a resumed run writes what an uninterrupted one would,
and both runners (and any number of worker processes) write the same bytes.

This module is the bottom of the curation package's runner layer: the
in-process runner (`inprocess.py`) and the Beam runner (`beam_runner.py`)
import only it, and the dispatcher (`pipeline.py`) imports all three. Whatever
runs a stage, it calls these functions, so which files exist (`plan`) is the
one shared record of what is done.

Documents are ordered by `order` = "<shard>/<index in shard>" (shards sorted
by input and path); exact, near-duplicate and Bloom survivors are the first
in that order.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

import ml_collections

from data_pipelines.curation import curation_config as config_lib
from data_pipelines.curation import dedup
from data_pipelines.curation import extract
from data_pipelines.curation import heuristics
from data_pipelines.curation import io as cio
from data_pipelines.curation import langid
from data_pipelines.curation import quality
from data_pipelines.curation import stats as cstats

# Step timings are CPU seconds of the working thread: comparable between runs on
# a shared machine and additive across Beam's worker threads.
clock = time.thread_time
CRASH_ENV = "ARMILLARY_CURATE_CRASH_AFTER"   # "<stage>:<n>": hard exit after n shard writes


class Shard(NamedTuple):
  key: str
  source: str
  path: str
  fmt: str
  text_field: str = "text"
  text_split: str = "file"


def _files(patterns) -> list[str]:
  return sorted({p for pattern in config_lib.split_list(patterns) for p in glob.glob(pattern)
                 if os.path.isfile(p)})


def list_shards(cfg) -> list[Shard]:
  """One shard per input file, keyed `<input name>-<5-digit index>`: first the
  files of config.input_paths (named config.input_source, format from the file
  name), then those of each config.inputs entry."""
  shards = []
  name = cfg.input_source
  for j, path in enumerate(_files(cfg.input_paths)):
    shards.append(Shard(f"{name}-{j:05d}", name, path, config_lib.format_of(path),
                        cfg.input_text_field or "text", "file"))
  for spec in cfg.inputs:
    for j, path in enumerate(_files(spec["paths"])):
      shards.append(Shard(f"{spec['name']}-{j:05d}", spec["name"], path, spec.get("format", "jsonl"),
                          spec.get("text_field", "text") or "text", spec.get("text_split", "file") or "file"))
  if not shards:
    raise config_lib.ConfigError(f"no input files match config.input_paths={cfg.input_paths!r} "
                                 f"or config.inputs={list(cfg.inputs)}")
  keys = [s.key for s in shards]
  if len(set(keys)) < len(keys):
    raise config_lib.ConfigError(f"config.input_source={name!r} is also the name of an entry of "
                                 "config.inputs: give each input its own name")
  return shards


def config_to_json(cfg) -> str:
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg
  return json.dumps(d, sort_keys=True)


def config_from_json(s: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(s))


# ----------------------------------------------------------------------------
# What each stage reads, and the keys that say whether it is done.

# The config fields each stage reads (a dotted name covers its whole sub-tree).
# A stage function is given only these (`Context.cfg`), so reading any other
# field fails loudly instead of leaving a stale result behind.
STAGE_FIELDS = {
    "filter": ("extract", "url_filter", "modifiers", "langid", "heuristics", "line_modifiers",
               "output.zstd_level"),
    "dedup": ("dedup", "output.zstd_level"),
    # The fastText model: retrained only when these change (not the threshold).
    "quality_model": ("quality.model", "quality.positive", "quality.negative", "quality.label",
                      "quality.word_ngrams", "quality.dim", "quality.epoch", "quality.lr",
                      "quality.min_count", "quality.seed", "quality.bucket"),
    "quality": ("quality", "output.zstd_level"),
    "write": ("quality.enabled", "output"),
}
# Bump when a stage's code changes what it writes: every key changes with it.
STAGE_VERSION = 1


def stage_view(cfg, stage: str) -> dict:
  """The part of the config that `stage` reads, as a plain dict."""
  out: dict = {}
  for field in STAGE_FIELDS[stage]:
    *parents, leaf = field.split(".")
    src, dst = cfg, out
    for name in parents:
      src, dst = src[name], dst.setdefault(name, {})
    value = src[leaf]
    dst[leaf] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  return out


def _hash(*parts: Any) -> str:
  return hashlib.sha256(json.dumps([STAGE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[:20]


def file_stamp(path: str) -> list:
  st = os.stat(path)
  return [path, st.st_size, st.st_mtime_ns]


class Keys(NamedTuple):
  """Each stage's key (per shard for filter and write)."""
  filter: dict
  dedup: str
  quality_model: str
  quality: str     # "" when config.quality.enabled is False
  write: dict


def stage_keys(shards: list[Shard], views: dict) -> Keys:
  """The key chain: a stage's key hashes its own fields and the keys it builds on."""
  filt = {s.key: _hash("filter", views["filter"], list(s), file_stamp(s.path)) for s in shards}
  dd = _hash("dedup", views["dedup"], sorted(filt.items()))
  q = config_from_json(views["quality"]).quality
  if not q.enabled:
    train_files = []
  elif q.model:
    train_files = [file_stamp(q.model)] if os.path.exists(q.model) else []
  else:
    train_files = [file_stamp(p) for p in _files(q.positive) + _files(q.negative)]
  model = _hash("quality_model", views["quality_model"], train_files)
  qual = _hash("quality", views["quality"], dd, model) if q.enabled else ""
  write = {s.key: _hash("write", views["write"], dd, qual) for s in shards}
  return Keys(filt, dd, model, qual, write)


@functools.lru_cache(maxsize=16)
def _view_config(view_json: str) -> ml_collections.ConfigDict:
  return config_from_json(view_json)


class Context(NamedTuple):
  """Everything a stage needs, picklable (it travels to worker processes and Beam)."""
  paths: "Paths"
  shards: tuple
  views: dict       # stage -> JSON of stage_view(cfg, stage)
  keys: Keys
  workers: int      # processes of the in-process runner

  def cfg(self, stage: str) -> ml_collections.ConfigDict:
    """The fields `stage` reads (a shared object: read it, do not change it)."""
    return _view_config(self.views[stage])

  @property
  def shard_keys(self) -> list[str]:
    return [s.key for s in self.shards]


def make_context(workdir: str, cfg) -> Context:
  shards = list_shards(cfg)
  views = {stage: config_to_json(stage_view(cfg, stage)) for stage in STAGE_FIELDS}
  workers = int(cfg.workers) or os.cpu_count() or 1
  return Context(Paths(workdir), tuple(shards), views, stage_keys(shards, views), workers)


class Paths:
  def __init__(self, workdir: str):
    self.workdir = workdir
    self.filtered = os.path.join(workdir, "filtered")
    self.dedup = os.path.join(workdir, "dedup")
    self.quality = os.path.join(workdir, "quality")
    self.output = os.path.join(workdir, "output")

  def shard_file(self, stage_dir: str, key: str, kind: str) -> str:
    return os.path.join(stage_dir, key + SHARD_SUFFIXES[kind])


# The files of one shard in filtered/ and output/ (the key file is written last).
SHARD_SUFFIXES = {"docs": ".jsonl.zst", "attrs": ".attrs.jsonl.zst", "stats": ".stats.json",
                  "key": ".key"}

_crash_counts: dict[str, int] = {}


def maybe_crash(stage: str, before_exit: Optional[Callable[[], None]] = None) -> None:
  """Test hook: os._exit after the n-th finished shard of `stage` (a hard kill);
  `before_exit` may stop worker processes first."""
  spec = os.environ.get(CRASH_ENV, "")
  if not spec:
    return
  name, _, n = spec.partition(":")
  if name == stage:
    _crash_counts[stage] = _crash_counts.get(stage, 0) + 1
    if _crash_counts[stage] >= int(n):
      if before_exit is not None:
        before_exit()
      os._exit(17)  # pylint: disable=protected-access


# Where `log` lines go: stderr, or (in a worker process) a list that the task
# hands back to the parent, which prints it (see inprocess.py).
_log_buffer: Optional[list] = None


def log(stage: str, message: str) -> None:
  line = f"[curate:{stage}] {message}"
  if _log_buffer is not None:
    _log_buffer.append(line)
  else:
    print(line, file=sys.stderr, flush=True)


def capture_logs(buffer: Optional[list]) -> None:
  """Collect `log` lines into `buffer` (None: print them again)."""
  global _log_buffer
  _log_buffer = buffer


# ----------------------------------------------------------------------------
# Stage A: per-document filtering.

class Resources(NamedTuple):
  banlists: heuristics.UrlBanlists
  langid: Optional[langid.LangIdModel]
  stop_words: frozenset
  rules: list
  keep_languages: tuple


@functools.lru_cache(maxsize=4)
def resources(cfg_json: str) -> Resources:
  """Ban lists, language model, stop words and rules, loaded once per process
  (`cfg_json`: the filter stage's view)."""
  cfg = config_from_json(cfg_json)
  banlists = (heuristics.load_banlists(cfg.url_filter) if cfg.url_filter.enabled
              else heuristics.UrlBanlists(frozenset(), (), frozenset(), frozenset()))
  model = langid.load(cfg.langid.model) if cfg.langid.enabled else None
  stop = frozenset(heuristics.read_list(cfg.heuristics.stop_words))
  return Resources(banlists, model, stop, heuristics.quality_rules(cfg.heuristics),
                   tuple(config_lib.split_list(cfg.langid.keep)))


def nbytes(text: str) -> int:
  return len(text.encode("utf-8", errors="replace"))


def process_record(rec: dict, order: str, cfg, res: Resources) -> tuple[Optional[dict], dict, dict]:
  """One raw record through stage A -> (document or None, attributes, stats).

  Attributes hold each step's decision: "keep", a modifier's effect, or the
  reason it removed the document.
  """
  st = cstats.new()
  attrs: dict[str, Any] = {"id": rec.get("id", ""), "url": rec.get("url", ""),
                           "source": rec.get("source", ""), "order": order, "steps": {}}
  steps = attrs["steps"]

  def drop(step: str, rule: str, why: str, nb_in: int, t0: float):
    cstats.record(st, step, bytes_in=nb_in, removed=rule, seconds=clock() - t0)
    steps[step] = f"{rule}: {why}" if why else rule
    return None, attrs, st

  t0 = clock() - rec.pop("_read_seconds", 0.0)   # time the reader spent on it
  raw_bytes = len(rec.get("html") or b"") or nbytes(rec.get("text", ""))
  where = ": ".join(filter(None, (rec.get("where", ""), rec.get("error", ""))))
  if "malformed" in rec:
    return drop("read", "malformed:" + rec["malformed"], where, 0, t0)
  if "truncated" in rec:
    return drop("read", "truncated:" + rec["truncated"], where, raw_bytes, t0)
  if "skipped" in rec:
    return drop("read", "skipped:" + rec["skipped"], "", raw_bytes, t0)
  changed = None
  if rec.get("invalid_utf8"):
    changed = steps["read"] = "invalid_utf8_replaced"
  cstats.record(st, "read", bytes_in=raw_bytes, bytes_out=raw_bytes, seconds=clock() - t0,
                changed=changed)

  t0 = clock()
  if "html" in rec:
    text = extract.html_to_text(rec["html"], cfg.extract, rec.get("charset", ""))
    if text is None:
      return drop("extract", "no_text", "", raw_bytes, t0)
    cstats.record(st, "extract", bytes_in=raw_bytes, bytes_out=nbytes(text),
                  seconds=clock() - t0)
  else:
    text = rec["text"]
  nb = nbytes(text)

  if cfg.url_filter.enabled:
    t0 = clock()
    rule, why = heuristics.url_filter(attrs["url"], res.banlists)
    if rule:
      return drop("url_filter", rule, why, nb, t0)
    cstats.record(st, "url_filter", bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
    steps["url_filter"] = "keep"

  t0 = clock()
  if cfg.modifiers.remove_urls:
    text = heuristics.remove_urls(text)
  text = heuristics.limit_newlines(text, cfg.modifiers.max_consecutive_newlines).strip()
  if not text:
    return drop("modifiers", "empty", "", nb, t0)
  cstats.record(st, "modifiers", bytes_in=nb, bytes_out=nbytes(text), seconds=clock() - t0)
  nb = nbytes(text)

  if res.langid is not None:
    t0 = clock()
    lang, prob = langid.top_language(res.langid, text, cfg.langid.max_chars)
    attrs["language"], attrs["language_score"] = lang, round(prob, 4)
    keep = res.keep_languages
    if lang not in keep or prob < cfg.langid.threshold:
      return drop("langid", "not_" + "_".join(keep) if lang not in keep
                  else "low_confidence", f"{lang} p={prob:.3f}", nb, t0)
    cstats.record(st, "langid", bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
    steps["langid"] = "keep"

  if cfg.heuristics.enabled:
    t0 = clock()
    rule, why = heuristics.apply_rules(text, cfg.heuristics, res.rules, res.stop_words)
    if rule:
      return drop("heuristics", rule, why, nb, t0)
    cstats.record(st, "heuristics", bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
    steps["heuristics"] = "keep"

  lm = cfg.line_modifiers
  if lm.enabled:
    t0 = clock()
    words_before = len(heuristics.split_words(text))
    new = text
    for modifier in heuristics.LINE_MODIFIERS:
      new = modifier(new, lm)
    if not new.strip():
      return drop("line_modifiers", "empty", "", nb, t0)
    why = heuristics.removed_words(words_before, new, lm)
    if why:
      return drop("line_modifiers", "removed_words", why, nb, t0)
    steps["line_modifiers"] = "keep" if new == text else "modified"
    text = new
    cstats.record(st, "line_modifiers", bytes_in=nb, bytes_out=nbytes(text),
                  seconds=clock() - t0)

  doc = {"id": attrs["id"], "url": attrs["url"], "source": attrs["source"], "text": text,
         "order": order}
  return doc, attrs, st


# report(docs read so far, bytes of the input file read so far)
Report = Callable[[int, int], None]


def shard_records(shard: Shard, report: Optional[Report] = None) -> Iterator[tuple[int, dict]]:
  """(index, record) of one input shard; a reader that fails mid-file yields
  one malformed record (naming the file and the error) and stops (the run
  goes on). `report`, if given, hears the position after each record."""
  i = -1
  try:
    records = cio.read_input(shard.path, shard.fmt, shard.source, text_field=shard.text_field,
                             text_split=shard.text_split)
    t0 = clock()
    for i, rec in enumerate(records):
      rec["_read_seconds"] = clock() - t0
      pos = rec.pop("_pos", 0)
      if report is not None:
        report(i + 1, pos)
      yield i, rec
      t0 = clock()
  except Exception as e:  # pylint: disable=broad-except
    yield i + 1, {"id": cio.doc_id(shard.key, "error"), "source": shard.source,
                  "malformed": f"reader_error:{type(e).__name__}", "where": shard.path,
                  "error": str(e)[:300]}


def order_key(shard_key: str, index: int) -> str:
  return f"{shard_key}/{index:07d}"


MAX_LOGGED_PROBLEMS = 5   # per shard; the attribute file has every one


def write_filtered_shard(ctx: Context, key: str,
                         results: Iterable[tuple[int, Optional[dict], dict, dict]]) -> dict:
  """Writes a shard's surviving docs, attributes, stats and key (key last).

  The `files` step counts the input file, removed as `empty` when it held no
  record; malformed and truncated records are logged (file and line) up to
  MAX_LOGGED_PROBLEMS per shard."""
  paths, cfg = ctx.paths, ctx.cfg("filter")
  shard = next(s for s in ctx.shards if s.key == key)
  results = sorted(results, key=lambda r: r[0])
  docs = [r[1] for r in results if r[1] is not None]
  st = cstats.merge(r[3] for r in results)
  cstats.record(st, "files", removed=None if results else "empty")
  if not results:
    log("filter", f"empty input file (no records): {shard.path}")
  problems = [r[2]["steps"]["read"] for r in results if r[1] is None and "read" in r[2]["steps"]
              and r[2]["steps"]["read"].startswith(("malformed:", "truncated:"))]
  for p in problems[:MAX_LOGGED_PROBLEMS]:
    log("filter", f"{shard.key}: {p}")
  if len(problems) > MAX_LOGGED_PROBLEMS:
    log("filter", f"{shard.key}: ... {len(problems) - MAX_LOGGED_PROBLEMS} more "
        f"(all in {paths.shard_file(paths.filtered, key, 'attrs')})")
  cio.write_jsonl_zst(paths.shard_file(paths.filtered, key, "docs"), docs, cfg.output.zstd_level)
  cio.write_jsonl_zst(paths.shard_file(paths.filtered, key, "attrs"), (r[2] for r in results),
                      cfg.output.zstd_level)
  cio.write_json(paths.shard_file(paths.filtered, key, "stats"), st)
  write_key(paths.shard_file(paths.filtered, key, "key"), ctx.keys.filter[key])
  return st


def filter_shard(ctx: Context, shard: Shard, report: Optional[Report] = None) -> dict:
  """Stage A for one shard, record by record in this process."""
  cfg = ctx.cfg("filter")
  res = resources(ctx.views["filter"])
  results = []
  for i, rec in shard_records(shard, report):
    doc, attrs, st = process_record(rec, order_key(shard.key, i), cfg, res)
    results.append((i, doc, attrs, st))
  return write_filtered_shard(ctx, shard.key, results)


# ----------------------------------------------------------------------------
# Stage B: dedup.

def read_filtered(paths: Paths, key: str) -> Iterator[dict]:
  yield from cio.read_rows(paths.shard_file(paths.filtered, key, "docs"))


def exact_drops(groups: Iterable[list[str]]) -> dict[str, str]:
  """{order: survivor order} for every non-first member of an exact-hash group."""
  out = {}
  for members in groups:
    members = sorted(members)
    for m in members[1:]:
      out[m] = members[0]
  return out


def bloom_pass(ctx: Context, drop: set, counted: Optional[int] = None) -> tuple[dict, dict, dict, dict]:
  """Sequential Bloom dedup over the surviving docs in canonical order.

  Returns ({order: new text or None}, {order: id}, stats, filter info). The filter is sized
  for the n-grams counted in a first pass (`counted`, if the caller counted
  them already; or config.expected_ngrams), so its memory is -n ln p / (ln 2)^2 bits.
  """
  paths, c = ctx.paths, ctx.cfg("dedup").dedup.bloom
  keys = sorted(ctx.shard_keys)   # canonical order: order keys sort as strings
  ids: dict[str, str] = {}
  st = cstats.new()
  if not c.enabled:
    for key in keys:
      for d in read_filtered(paths, key):
        ids[d["order"]] = d["id"]
    return {}, ids, st, {}
  expected = int(c.expected_ngrams)
  if not expected:
    expected = counted if counted is not None else sum(
        dedup.count_ngrams(d["text"], c.ngram) for key in keys
        for d in read_filtered(paths, key) if d["order"] not in drop)
  bloom = dedup.BloomFilter(max(expected, 1), c.false_positive_rate)
  changed: dict[str, Optional[str]] = {}
  for key in keys:
    for d in read_filtered(paths, key):
      ids[d["order"]] = d["id"]
      if d["order"] in drop:
        continue
      t0 = clock()
      nb = nbytes(d["text"])
      dec = dedup.bloom_dedup_one(bloom, d["text"], c)
      if dec.text is None:
        changed[d["order"]] = None
        cstats.record(st, "bloom_dedup", bytes_in=nb, removed="duplicate_ngrams",
                      seconds=clock() - t0)
      else:
        if dec.text != d["text"]:
          changed[d["order"]] = dec.text
        cstats.record(st, "bloom_dedup", bytes_in=nb, bytes_out=nbytes(dec.text),
                      seconds=clock() - t0)
  info = {"expected_ngrams": expected, "bits": bloom.m, "hashes": bloom.k, "bytes": bloom.nbytes,
          "false_positive_rate": c.false_positive_rate}
  return changed, ids, st, info


def write_dedup(ctx: Context, exact: dict[str, str], near: dict[str, str],
                bloom: dict[str, Optional[str]], ids: dict[str, str], st: dict, info: dict) -> None:
  """Writes decisions (one row per touched document), clusters, stats and key."""
  paths, cfg = ctx.paths, ctx.cfg("dedup")
  rows = []
  for order in sorted(set(exact) | set(near) | set(bloom)):
    if order in exact:
      rows.append({"order": order, "drop": "exact_dup", "of": ids[exact[order]]})
    elif order in near and near[order] != order:
      rows.append({"order": order, "drop": "near_dup", "cluster": ids[near[order]]})
    elif order in bloom:
      text = bloom[order]
      rows.append({"order": order, "drop": "bloom_dup"} if text is None else {"order": order, "text": text})
  clusters: dict[str, list[str]] = {}
  for order, root in near.items():
    clusters.setdefault(root, []).append(order)
  crow = [{"cluster_id": ids[root], "survivor": ids[root],
           "members": [ids[o] for o in sorted(members)]} for root, members in sorted(clusters.items())]
  cio.write_jsonl_zst(os.path.join(paths.dedup, "decisions.jsonl.zst"), rows, cfg.output.zstd_level)
  cio.write_jsonl_zst(os.path.join(paths.dedup, "clusters.jsonl.zst"), crow, cfg.output.zstd_level)
  cio.write_json(os.path.join(paths.dedup, "bloom.json"), info)
  cio.write_json(os.path.join(paths.dedup, "stats.json"), st)
  write_key(os.path.join(paths.dedup, "key"), ctx.keys.dedup)


def dedup_stats(exact: dict, near: dict, n_docs: int, bytes_by_order: dict, t_exact: float,
                t_near: float) -> dict:
  st = cstats.new()
  n_exact = len(exact)
  n_near = sum(1 for o, r in near.items() if o != r)
  cstats.record(st, "exact_dedup", n=n_docs - n_exact, seconds=t_exact,
                bytes_in=sum(bytes_by_order.values()) if bytes_by_order else 0,
                bytes_out=sum(v for o, v in bytes_by_order.items() if o not in exact))
  if n_exact:
    cstats.record(st, "exact_dedup", n=n_exact, removed="exact_dup",
                  bytes_in=sum(bytes_by_order[o] for o in exact))
  rest = {o: v for o, v in bytes_by_order.items() if o not in exact}
  near_drop = {o for o, r in near.items() if o != r}
  cstats.record(st, "minhash_dedup", n=len(rest) - n_near, seconds=t_near,
                bytes_in=sum(v for o, v in rest.items() if o not in near_drop),
                bytes_out=sum(v for o, v in rest.items() if o not in near_drop))
  if n_near:
    cstats.record(st, "minhash_dedup", n=n_near, removed="near_dup",
                  bytes_in=sum(rest[o] for o in near_drop))
  return st


def load_decisions(paths: Paths) -> dict[str, dict]:
  return {r["order"]: r for r in cio.read_rows(os.path.join(paths.dedup, "decisions.jsonl.zst"))}


def by_shard(rows: Optional[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """{shard key: its entries} of an {order: ...} dict (order = "<shard>/<index>")."""
  out: dict[str, dict[str, Any]] = {}
  for order, value in (rows or {}).items():
    out.setdefault(order.rpartition("/")[0], {})[order] = value
  return out


def deduped_docs(paths: Paths, key: str, decisions: dict[str, dict]) -> Iterator[dict]:
  """The shard's filtered docs with dedup applied (dropped docs left out)."""
  for d in read_filtered(paths, key):
    dec = decisions.get(d["order"])
    if dec is None:
      yield d
    elif "drop" not in dec:
      yield {**d, "text": dec["text"]}


# ----------------------------------------------------------------------------
# Stage C: quality.

def quality_model_path(ctx: Context) -> str:
  """config.quality.model, or the model trained on config.quality.positive /
  .negative (trained again only when the fields it depends on change)."""
  paths, c = ctx.paths, ctx.cfg("quality").quality
  if c.model:
    return c.model
  path = os.path.join(paths.quality, "model.bin")
  marker = os.path.join(paths.quality, "model.key")
  if not (os.path.exists(path) and read_key(marker) == ctx.keys.quality_model):
    quality.train(_files(c.positive), _files(c.negative), path, c)
    write_key(marker, ctx.keys.quality_model)
  return path


@functools.lru_cache(maxsize=2)
def _quality_model(path: str):
  return quality.load(path)


def write_scores(ctx: Context, scored: Iterable[tuple[str, float]], seconds: float,
                 nbytes: int) -> None:
  """Writes the scores and the threshold, then the stage's key."""
  paths, cfg = ctx.paths, ctx.cfg("quality")
  scored = sorted(scored)
  c = cfg.quality
  thr = (quality.top_fraction_threshold((s for _, s in scored), c.top_fraction)
         if c.top_fraction > 0 else float(c.threshold))
  cio.write_jsonl_zst(os.path.join(paths.quality, "scores.jsonl.zst"),
                      ({"order": o, "score": s} for o, s in scored), cfg.output.zstd_level)
  cio.write_json(os.path.join(paths.quality, "threshold.json"),
                 {"threshold": thr, "top_fraction": c.top_fraction, "docs": len(scored),
                  "seconds": seconds, "bytes": nbytes})
  write_key(os.path.join(paths.quality, "key"), ctx.keys.quality)


def score_docs(docs: Iterable[dict], model_path: str, label: str) -> Iterator[tuple[str, float, int]]:
  model = _quality_model(model_path)
  for d in docs:
    yield d["order"], round(quality.score(model, d["text"], label), 6), nbytes(d["text"])


def load_scores(paths: Paths) -> tuple[dict[str, float], dict]:
  meta = cio.read_json(os.path.join(paths.quality, "threshold.json"))
  scores = {r["order"]: r["score"] for r in cio.read_rows(os.path.join(paths.quality, "scores.jsonl.zst"))}
  return scores, meta


# ----------------------------------------------------------------------------
# Stage D: write the curated shards.

def write_output_shard(ctx: Context, key: str, decisions: dict[str, dict],
                       scores: Optional[dict[str, float]], qmeta: Optional[dict]) -> dict:
  """Stage D for one shard (`decisions`, `scores`: at least this shard's)."""
  paths, cfg = ctx.paths, ctx.cfg("write")
  st = cstats.new()
  t0 = clock()
  attrs = {a["order"]: a for a in cio.read_rows(paths.shard_file(paths.filtered, key, "attrs"))}
  out = []
  for d in read_filtered(paths, key):
    a = attrs[d["order"]]
    dec = decisions.get(d["order"])
    if dec is not None and "drop" in dec:
      a["steps"]["dedup"] = dec["drop"] + f": of {dec.get('of') or dec.get('cluster')}" \
          if dec["drop"] != "bloom_dup" else dec["drop"]
      if dec["drop"] == "near_dup":
        a["cluster_id"] = dec["cluster"]
      continue
    text = d["text"] if dec is None else dec["text"]
    a["steps"]["dedup"] = "keep" if dec is None else "paragraphs_removed"
    if scores is not None:
      s = scores[d["order"]]
      a["quality_score"] = s
      nb = nbytes(text)
      if s < qmeta["threshold"]:
        a["steps"]["quality"] = f"below_threshold: {s:.4f} < {qmeta['threshold']:.4f}"
        cstats.record(st, "quality", bytes_in=nb, removed="below_threshold")
        continue
      a["steps"]["quality"] = "keep"
      cstats.record(st, "quality", bytes_in=nb, bytes_out=nb)
    out.append({"id": d["id"], "url": d["url"], "source": d["source"], "text": text})
  cio.write_jsonl_zst(paths.shard_file(paths.output, key, "docs"), out, cfg.output.zstd_level)
  if cfg.output.attributes:
    cio.write_jsonl_zst(paths.shard_file(paths.output, key, "attrs"),
                        (attrs[o] for o in sorted(attrs)), cfg.output.zstd_level)
  nb = sum(nbytes(d["text"]) for d in out)
  cstats.record(st, "write", n=len(out), bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
  cio.write_json(paths.shard_file(paths.output, key, "stats"), st)
  write_key(paths.shard_file(paths.output, key, "key"), ctx.keys.write[key])
  return st


# ----------------------------------------------------------------------------
# Bookkeeping: what is done, what is left.
#
# A stage's marker is its key file, written after everything else it writes:
# `<shard>.key` for stages A and D, dedup/key for B, quality/key for C. A
# marker holding the stage's current key says "done with these inputs and
# these config fields", whichever runner (or killed process) wrote it.

def write_key(path: str, key: str) -> None:
  cio.write_text(path, key + "\n")


def read_key(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip()
  except FileNotFoundError:
    return ""


def filter_done(ctx: Context, key: str) -> bool:
  p = ctx.paths
  return (os.path.exists(p.shard_file(p.filtered, key, "stats"))
          and read_key(p.shard_file(p.filtered, key, "key")) == ctx.keys.filter[key])


def dedup_done(ctx: Context) -> bool:
  p = ctx.paths
  return (os.path.exists(os.path.join(p.dedup, "stats.json"))
          and read_key(os.path.join(p.dedup, "key")) == ctx.keys.dedup)


def quality_done(ctx: Context) -> bool:
  p = ctx.paths
  return (os.path.exists(os.path.join(p.quality, "threshold.json"))
          and read_key(os.path.join(p.quality, "key")) == ctx.keys.quality)


def write_done(ctx: Context, key: str) -> bool:
  p = ctx.paths
  return (os.path.exists(p.shard_file(p.output, key, "stats"))
          and read_key(p.shard_file(p.output, key, "key")) == ctx.keys.write[key])


class Plan(NamedTuple):
  """The work a (resumed) run has left, in stage order."""
  filter: list[Shard]   # shards whose filter key file is missing or stale
  dedup: bool
  quality: bool         # only when config.quality.enabled
  write: list[str]      # shard keys whose output key file is missing or stale

  @property
  def empty(self) -> bool:
    return not (self.filter or self.dedup or self.quality or self.write)


def plan(ctx: Context) -> Plan:
  """What is left to do. Computed once, before any stage runs: a stage only
  ever adds its own markers, so the later stages' part of the plan cannot
  change while the earlier ones run."""
  return Plan(filter=[s for s in ctx.shards if not filter_done(ctx, s.key)],
              dedup=not dedup_done(ctx),
              quality=bool(ctx.keys.quality) and not quality_done(ctx),
              write=[k for k in ctx.shard_keys if not write_done(ctx, k)])


def prepare_workdir(ctx: Context, cfg_json: str) -> list[str]:
  """Records the config (config.json: the latest run's) and removes the shard
  files of inputs the config no longer has, so output/ holds this config's
  shards only. Refuses a non-empty directory that holds no curation run.
  Returns the removed files."""
  paths = ctx.paths
  config_json = os.path.join(paths.workdir, "config.json")
  ours = {"config.json", "stats.json", "filtered", "dedup", "quality", "output"}
  if not os.path.exists(config_json) and set(os.listdir(paths.workdir)) - ours:
    raise ValueError(f"--workdir {paths.workdir} is not empty and holds no curation run "
                     "(no config.json): use a new or empty directory")
  keys = set(ctx.shard_keys)
  removed = []
  for stage_dir in (paths.filtered, paths.output):
    for name in sorted(os.listdir(stage_dir)) if os.path.isdir(stage_dir) else []:
      suffix = next((x for x in SHARD_SUFFIXES.values() if name.endswith(x)), None)
      if suffix and name[:-len(suffix)].removesuffix(".attrs") not in keys:
        os.remove(os.path.join(stage_dir, name))
        removed.append(os.path.join(stage_dir, name))
  if removed:
    log("plan", f"removed {len(removed)} files of shards this config no longer has "
        f"(e.g. {removed[0]})")
  cio.write_json(config_json, json.loads(cfg_json))
  return removed


def empty_inputs(ctx: Context) -> list[str]:
  """The input files that held no record (counted as `files` removed `empty`)."""
  p = ctx.paths
  return [s.path for s in ctx.shards
          if cio.read_json(p.shard_file(p.filtered, s.key, "stats")).get("files", {})
          .get("removed", {}).get("empty")]


def collect_stats(ctx: Context) -> dict:
  paths, keys = ctx.paths, ctx.shard_keys
  parts = [cio.read_json(paths.shard_file(paths.filtered, k, "stats")) for k in keys]
  parts.append(cio.read_json(os.path.join(paths.dedup, "stats.json")))
  parts += [cio.read_json(paths.shard_file(paths.output, k, "stats")) for k in keys]
  st = cstats.merge(parts)
  if ctx.cfg("write").quality.enabled and "quality" in st:
    meta = cio.read_json(os.path.join(paths.quality, "threshold.json"))
    st["quality"]["seconds"] += meta["seconds"]
  return st


output_files = cio.output_shards   # the curated document shards of a run
