"""Default configuration of the curation pipeline (DCLM-Baseline thresholds).

Every threshold of every rule lives here; the rule functions in
`heuristics.py` read only their own sub-config. Values follow DCLM's
`dclm_baseline_refinedweb.yaml` (RefinedWeb filters without the
high-quality URL list), which takes the Gopher quality and repetition
thresholds from Rae et al. 2021, Table A1.
"""
from __future__ import annotations

import glob
import os
from typing import Sequence, Union

import ml_collections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "curation_configs")


def config_path(name: str) -> str:
  """Absolute path of a file shipped in data_pipelines/curation_configs/."""
  return os.path.join(CONFIG_DIR, name)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Inputs, two ways (both may be used; each matched file is a shard):
  #  * input_paths: comma-separated globs, settable on the command line
  #    (--config.input_paths='crawl/*.warc.gz,extra.jsonl'); each file's format
  #    follows its name (FORMAT_SUFFIXES), documents get source `input_source`,
  #    and JSONL documents are read from the field `input_text_field`.
  #  * inputs: a list of {name, paths (globs), format: warc|jsonl|text,
  #    text_field, text_split: file|line|paragraph (format=text)}, for config files.
  # The work directory is not a config field: it is `pipeline.run`'s argument
  # (the CLI's --workdir).
  c.input_paths = ""
  c.input_source = "input"
  c.input_text_field = "text"
  c.inputs = []
  # Processes of the in-process runner (a pool over shards); 0: os.cpu_count().
  # Any value writes the same bytes.
  c.workers = 0

  c.extract = ml_collections.ConfigDict(dict(
      main_content=True, preserve_formatting=True, list_bullets=True, alt_texts=False,
      max_html_bytes=5_000_000))

  # RefinedWeb URL filtering, as DCLM runs it: exact domain match on a domain
  # ban list, substring match on a strict word list (ignoring '-' and '.'),
  # whole-word match on a hard list, and >= 2 whole-word hits on a soft list.
  c.url_filter = ml_collections.ConfigDict(dict(
      enabled=True,
      banned_domains=config_path("banlists/banned_domains.txt"),
      banned_words_strict=config_path("banlists/banned_words_strict.txt"),
      banned_words_hard=config_path("banlists/banned_words_hard.txt"),
      banned_words_soft=config_path("banlists/banned_words_soft.txt"),
      soft_min_matches=2))

  c.modifiers = ml_collections.ConfigDict(dict(
      remove_urls=True,             # url_removal_modifier
      max_consecutive_newlines=2,   # newline_removal_modifier
  ))

  c.langid = ml_collections.ConfigDict(dict(
      enabled=True, model=config_path("langid_nb.npz"), keep="en", threshold=0.65,   # keep: comma-separated
      max_chars=5000))

  c.heuristics = ml_collections.ConfigDict(dict(
      enabled=True,
      min_words=50, max_words=100_000,           # page_length_filter (words, no punctuation)
      min_mean_word_length=3.0, max_mean_word_length=10.0,
      max_symbol_to_word_ratio=0.1,              # '#', '...', '. . .', '…' per word
      max_bullet_lines_ratio=0.9,
      max_ellipsis_lines_ratio=0.3,
      max_non_alpha_words_ratio=0.2,             # words without any letter
      min_stop_words=2, stop_words=config_path("stop_words_en.txt"),
      # Gopher repetition (massive_web_repetition_filters).
      max_dup_line_frac=0.3, max_dup_para_frac=0.3,
      max_dup_line_char_frac=0.2, max_dup_para_char_frac=0.2,
      max_top_ngram_char_frac={"2": 0.20, "3": 0.18, "4": 0.16},
      max_dup_ngram_char_frac={"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11,
                               "10": 0.10},
  ))

  # RefinedWeb line-wise corrections, then the 5%-removed-words document rule.
  c.line_modifiers = ml_collections.ConfigDict(dict(
      enabled=True,
      max_uppercase_ratio=0.5,
      max_numeric_ratio=0.999999,
      remove_counters=True,
      min_line_words=2,
      # (phrase, location any|prefix|suffix); only in lines of <= max_words words,
      # and only the phrase is removed (the line goes if nothing else is left).
      boilerplate=[["items in cart", "any"], ["Read more...", "suffix"], ["Sign-in", "prefix"]],
      boilerplate_max_words=10,
      max_removed_word_ratio=0.05,
  ))

  c.dedup = ml_collections.ConfigDict(dict(
      exact=True,
      minhash=ml_collections.ConfigDict(dict(
          enabled=True, ngram=5, num_perm=128, threshold=0.8, seed=1,
          bands=0, rows=0,   # 0: chosen from the threshold
          verify=True)),     # keep an LSH candidate pair only if est. Jaccard >= threshold
      bloom=ml_collections.ConfigDict(dict(
          enabled=True, ngram=13, paragraph_threshold=0.8, document_threshold=0.8,
          false_positive_rate=0.01, expected_ngrams=0,   # 0: count them first
          min_paragraph_words=0)),
  ))

  c.quality = ml_collections.ConfigDict(dict(
      enabled=False,
      model="",              # a trained fastText model; else trained from the files below
      # Comma-separated globs of JSONL(.zst/.gz) files with a `text` field:
      # high-quality (positive) and other (negative) training documents.
      positive="", negative="",
      label="hq", word_ngrams=2, dim=32, epoch=10, lr=0.5, min_count=1, seed=0,
      # Hashed bigram buckets (the model holds bucket x dim floats). Keep fastText's
      # 2M: with smaller tables the fasttext 0.9.2 wheel trains nondeterministically
      # (and sometimes stops with "Encountered NaN") even with thread=1.
      bucket=2_000_000,
      threshold=0.0,         # keep docs with score >= threshold
      top_fraction=0.0,      # if > 0: keep the top fraction by score instead
  ))

  c.output = ml_collections.ConfigDict(dict(
      attributes=True, zstd_level=3))
  return c


# ----------------------------------------------------------------------------
# Checks, run before any work (`pipeline.run`), so that a run that cannot
# finish fails at once, naming the field.

# File name endings -> input format (for config.input_paths).
FORMAT_SUFFIXES = ((".warc", "warc"), (".warc.gz", "warc"), (".warc.zst", "warc"),
                   (".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".jsonl.zst", "jsonl"),
                   (".json.gz", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl"),
                   (".txt", "text"), (".txt.gz", "text"), (".txt.zst", "text"))
FORMATS = ("warc", "jsonl", "text")


class ConfigError(ValueError):
  """A config that cannot run; the message names the field (config.a.b=value)."""


def split_list(value: Union[str, Sequence[str]]) -> list[str]:
  """A comma-separated string (what the command line can set) or a list -> list."""
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]


def format_of(path: str) -> str:
  """The input format of a file name, '' if its ending is not in FORMAT_SUFFIXES."""
  name = path.lower()
  for suffix, fmt in sorted(FORMAT_SUFFIXES, key=lambda sf: -len(sf[0])):
    if name.endswith(suffix):
      return fmt
  return ""


def _matches(field: str, value, what: str) -> list[str]:
  """Every file the globs of config.<field> match; an error for a glob that matches none."""
  files = []
  for pattern in split_list(value):
    found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    if not found:
      raise ConfigError(f"config.{field}: {pattern!r} matches no {what}")
    files += found
  return files


def _need_file(field: str, path: str) -> None:
  if not path or not os.path.isfile(path):
    raise ConfigError(f"config.{field}={path!r}: file not found")


def _is_name(name) -> bool:
  return isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum()


def check(c) -> None:
  """Raises ConfigError (naming the field) for a config that cannot run to the end."""
  if not split_list(c.input_paths) and not list(c.inputs):
    raise ConfigError("config.input_paths is empty (and config.inputs too): name the input "
                      "files, e.g. --config.input_paths='crawl/*.warc.gz,more/*.jsonl'")
  for path in _matches("input_paths", c.input_paths, "file"):
    if not format_of(path):
      endings = ", ".join(s for s, _ in FORMAT_SUFFIXES)
      raise ConfigError(f"config.input_paths: cannot tell the format of {path!r} from its name "
                        f"(known endings: {endings}); name it in config.inputs with a format")
  for i, spec in enumerate(c.inputs):
    field = f"inputs[{i}]"
    if not isinstance(spec, dict) or not spec.get("name") or not spec.get("paths"):
      raise ConfigError(f"config.{field}={spec!r}: needs a name and paths")
    if not _is_name(spec["name"]):
      raise ConfigError(f"config.{field}.name={spec['name']!r} must be letters, digits, '-' or '_' "
                        "(it names the shards)")
    if spec.get("format", "jsonl") not in FORMATS:
      raise ConfigError(f"config.{field}.format={spec.get('format')!r} must be one of {', '.join(FORMATS)}")
    if spec.get("text_split", "file") not in ("file", "line", "paragraph", ""):
      raise ConfigError(f"config.{field}.text_split={spec.get('text_split')!r} must be file, line or paragraph")
    _matches(f"{field}.paths", spec["paths"], "file")
  if not _is_name(c.input_source):
    raise ConfigError(f"config.input_source={c.input_source!r} must be letters, digits, '-' or '_' "
                      "(it names the shards)")
  if int(c.workers) < 0:
    raise ConfigError(f"config.workers={c.workers} must be >= 0 (0: os.cpu_count())")
  if c.url_filter.enabled:
    for name in ("banned_domains", "banned_words_strict", "banned_words_hard", "banned_words_soft"):
      _need_file(f"url_filter.{name}", c.url_filter[name])
  if c.langid.enabled:
    _need_file("langid.model", c.langid.model)
    if not split_list(c.langid.keep):
      raise ConfigError("config.langid.keep is empty: name the languages to keep, e.g. 'en'")
  if c.heuristics.enabled:
    _need_file("heuristics.stop_words", c.heuristics.stop_words)
  q = c.quality
  if q.enabled:
    if q.model:
      _need_file("quality.model", q.model)
    else:
      for field in ("positive", "negative"):
        if not split_list(q[field]):
          raise ConfigError(
              f"config.quality.{field} is empty, but config.quality.enabled=True needs a fastText "
              "model (config.quality.model) or training documents: JSONL files of high-quality "
              "(config.quality.positive) and other (config.quality.negative) text; or set "
              "config.quality.enabled=False")
        _matches(f"quality.{field}", q[field], "file")
    if not 0.0 <= float(q.top_fraction) <= 1.0:
      raise ConfigError(f"config.quality.top_fraction={q.top_fraction} must be in [0, 1]")
