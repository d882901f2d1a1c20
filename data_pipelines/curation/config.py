"""Default configuration of the curation pipeline (DCLM-Baseline thresholds).

Every threshold of every rule lives here; the rule functions in
`heuristics.py` read only their own sub-config. Values follow DCLM's
`dclm_baseline_refinedweb.yaml` (RefinedWeb filters without the
high-quality URL list), which takes the Gopher quality and repetition
thresholds from Rae et al. 2021, Table A1.
"""
from __future__ import annotations

import os

import ml_collections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "curation_configs")


def config_path(name: str) -> str:
  """Absolute path of a file shipped in data_pipelines/curation_configs/."""
  return os.path.join(CONFIG_DIR, name)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Inputs: a list of {name, paths (globs), format: warc|jsonl|text, text_field,
  # text_split: file|line|paragraph (format=text)}. Each matched file is a shard.
  # The work directory is not a config field: it is `pipeline.run`'s argument
  # (the CLI's --workdir), and one workdir holds one config's run.
  c.inputs = []

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
      enabled=True, model=config_path("langid_nb.npz"), keep=["en"], threshold=0.65,
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
      positive=[], negative=[],   # JSONL(.zst/.gz) files with a `text` field
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
