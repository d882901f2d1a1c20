"""Metric writers: JSON lines and TensorBoard event files in the run directory.

Every run directory gets `metrics.jsonl` (one JSON object per line with a
`step` key) and, when tensorboardX is importable, TensorBoard event files under
`tb/`. Only process 0 writes in a multi-host job.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np


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
    if not enabled:
      self._file = None
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    for key, value in metrics.items():
      value = _to_python(value)
      if isinstance(value, float) and not math.isfinite(value):
        value = str(value)  # JSON has no NaN/Inf; keep them readable.
      record[key] = value
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, int(step))

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
