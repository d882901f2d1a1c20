"""seqio Tasks and Mixtures over selections, for the LM runner.

A selection directory has the curation output layout (`output/*.jsonl.zst`),
so the LM runner reads it as `data.source=curated, data.curated_dir=<dir>`;
these helpers register the same task (and mixtures of several selections or
of a selection and other curated data) by name, through
`curation.seqio_tasks`: tokenize, split long documents into chunks of L - 1
tokens, append EOS, pack.
"""
from __future__ import annotations

from typing import Mapping

from data_pipelines.curation import io as cio
from data_pipelines.curation import seqio_tasks


def register_selection_task(name: str, selection_dir: str, vocabulary=None,
                            validation_fraction: float = 0.0) -> str:
  """A seqio Task over a selection's shards (see `seqio_tasks.register_curated_task`)."""
  shards = cio.output_shards(selection_dir)
  if not shards:
    raise FileNotFoundError(f"no selection shards under {selection_dir}/output (run the selection)")
  return seqio_tasks.register_curated_task(name, shards, vocabulary,
                                           validation_fraction=validation_fraction)


def register_selection_mixture(name: str, rates: Mapping[str, float]) -> str:
  """A seqio Mixture of registered tasks ({task name: rate})."""
  return seqio_tasks.register_curated_mixture(name, rates)
