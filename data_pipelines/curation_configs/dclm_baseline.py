"""DCLM-Baseline curation: RefinedWeb URL filters, English (p >= 0.65),
Gopher quality and repetition rules, RefinedWeb line modifiers, exact +
MinHash + Bloom-filter dedup, fastText quality filter (top 10%).

The quality filter needs a classifier: a trained fastText model
(config.quality.model) or JSONL training files, high-quality text as
positive (DCLM: OpenHermes-2.5 + ELI5) and ordinary web text as negative
(DCLM: RefinedWeb). The run checks this before it starts. Inputs and training
files are comma-separated globs:

  python -m data_pipelines.curate --config=data_pipelines/curation_configs/dclm_baseline.py \
      --config.input_paths='/data/cc/*.warc.gz,/data/extra/*.jsonl.zst' \
      --config.quality.positive=/data/oh25.jsonl --config.quality.negative=/data/rw.jsonl \
      --workdir=/data/curated

Variant `:no_quality` (`--config=.../dclm_baseline.py:no_quality`) runs
everything but the quality filter, for inputs without classifier data.
"""
from data_pipelines.curation import curation_config as config_lib

VARIANTS = ("", "no_quality")


def get_config(arg: str = ""):
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"dclm_baseline variant {arg!r} must be one of {VARIANTS}")
  c = config_lib.default_config()
  c.quality.enabled = arg != "no_quality"
  c.quality.top_fraction = 0.1
  return c
