"""Metric writers: JSON lines and TensorBoard event files in the run directory.

Every run directory gets `metrics.jsonl` (one JSON object per line with a
`step` key) and, when tensorboardX is importable, TensorBoard event files under
`tb/`. Only process 0 writes in a multi-host job.

Resuming (`MetricWriter.resume(step)`): a resumed run re-runs the steps after
its checkpoint, so the records of those steps are dropped from metrics.jsonl
(rewritten atomically) and TensorBoard's are purged (`purge_step=step + 1`);
the records at `step` itself were written before its checkpoint (the trainer
runs the metric hooks before the checkpoint hook), so they stay, and a later
write of the same key at that step is skipped. Each step's records then appear
exactly once however often the run is killed and resumed.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from framework import files


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
    arr = np.asarray(value)
    if arr.ndim == 0:
      return arr.item()
    return arr.tolist()
  return value


class MetricWriter:
  """Writes scalar metrics to `<workdir>/metrics.jsonl` and TensorBoard.

  Usage:
    writer = MetricWriter(workdir)
    writer.write(step, {"train/loss": 2.3, "train/lr": 1e-3})
    writer.close()
  """

  def __init__(self, workdir: str, *, filename: str = "metrics.jsonl",
               tensorboard: bool = True, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self.path = os.path.join(workdir, filename)
    self._tb = None
    self._tb_class = None  # the event file is opened at the first write (after `resume`)
    self._purge_step = None
    self._written_at: dict[int, set[str]] = {}
    if not enabled:
      self._file = None
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb_class = SummaryWriter
      except ImportError:
        self._tb_class = None

  def _tensorboard(self):
    if self._tb is None and self._tb_class is not None:
      self._tb = self._tb_class(os.path.join(self.workdir, "tb"), purge_step=self._purge_step)
    return self._tb

  def resume(self, step: int) -> None:
    """Drops every record after `step` (the steps a resumed run will redo).

    metrics.jsonl is rewritten atomically without records whose step > `step`
    (and without a line cut short by a kill); TensorBoard events after `step`
    are purged. Keys already recorded at `step` are not written again.
    """
    if not self.enabled:
      return
    step = int(step)
    self._file.close()
    kept = [r for r in _read_records(self.path) if int(r.get("step", 0)) <= step]
    with files.atomic_open(self.path) as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
    self._file = open(self.path, "a", encoding="utf-8")
    self._written_at = {step: {k for r in kept if r.get("step") == step for k in r}}
    self._purge_step = step + 1
    if self._tb is not None:  # already opened: reopen so that the purge applies
      self._tb.close()
      self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    done = self._written_at.get(int(step), ())
    for key, value in metrics.items():
      if key in done:
        continue  # written before the checkpoint this run resumed from
      value = _to_python(value)
      if isinstance(value, float) and not math.isfinite(value):
        value = str(value)  # JSON has no NaN/Inf; keep them readable.
      record[key] = value
    if len(record) == 1 and metrics:
      return
    try:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:  # e.g. a full disk: say which file and how much space is left
      raise files.write_error(self.path, e) from e
    tb = self._tensorboard()
    if tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          tb.add_scalar(key, value, int(step))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file back into a list of dicts."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _read_records(path: str) -> list[dict[str, Any]]:
  """Like `read_metrics`, but a missing file is empty and unparseable lines
  (a line cut short by a kill) are skipped."""
  records = []
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict):
          records.append(record)
  except FileNotFoundError:
    pass
  return records


def last_logged(path: str, prefix: str = "train/") -> dict[str, Any]:
  """The newest record holding `prefix` keys, those keys without the prefix
  ({} if none): what a run that had nothing left to train last reported."""
  for record in reversed(_read_records(path)):
    values = {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}
    if values:
      return values
  return {}
