"""Curation CLI: raw HTML/WARC/JSONL/text -> curated JSONL.zst shards.

  python -m data_pipelines.curate \
      --config=data_pipelines/curation_configs/test_corpus.py:/tmp/corpus \
      --workdir=/tmp/curated
  python -m data_pipelines.curate \
      --config=data_pipelines/curation_configs/dclm_baseline.py:no_quality \
      --config.input_paths='crawl/*.warc.gz,notes.jsonl' --workdir=/tmp/mine
  python -m data_pipelines.curate --config=... --workdir=... --runner=direct \
      --beam_args="--direct_num_workers=2 --direct_running_mode=multi_threading"

The in-process runner uses --config.workers processes (0, the default: all
cores). Re-running with the same --workdir resumes: finished shards and
stages are not redone, and after a config change only the stages that read a
changed field run again. Per-step statistics go to <workdir>/stats.json and
are printed as a table; progress lines go to stderr. A config that cannot run
(no inputs, quality filter without training data, ...) fails at start with one
line naming the field.
"""
from __future__ import annotations

import shlex
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipelines.curation import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Curation config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output/work directory (resumable).")
_RUNNER = flags.DEFINE_enum("runner", "inprocess", list(pipeline.RUNNERS),
                            "inprocess: plain Python loop; direct/beam: Apache Beam (DirectRunner "
                            "unless --beam_args names another runner).")
_BEAM_ARGS = flags.DEFINE_string("beam_args", "", "Beam pipeline options, e.g. "
                                 "'--direct_num_workers=2 --direct_running_mode=multi_processing'.")


def main(argv):
  del argv
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  try:
    summary = pipeline.run(_CONFIG.value, _WORKDIR.value, _RUNNER.value, shlex.split(_BEAM_ARGS.value))
  except pipeline.ConfigError as e:
    print(f"curate: config error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  workers = f", workers={summary['workers']}" if summary["workers"] else ""
  print(f"{summary['docs_out']} documents in {summary['shards']} shards -> "
        f"{_WORKDIR.value}/output ({summary['wall_seconds']:.1f}s, runner={summary['runner']}{workers})")
  sys.stdout.flush()


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
