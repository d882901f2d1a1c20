"""A small real-text corpus built offline from text that ships with Python.

`pydoc_data.topics` holds the Python language reference's help topics: about
0.46 MB of English technical prose in every CPython install. Each blank-line
separated paragraph becomes one document; every 10th topic (sorted by name)
goes to validation, so the two splits share no text.
"""
from __future__ import annotations

import json
import os
import re


def pydoc_documents() -> dict[str, list[dict[str, str]]]:
  """Returns {"train": [...], "validation": [...]} documents with id and text."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": []}
  for i, name in enumerate(sorted(topics.topics)):
    split = "validation" if i % 10 == 9 else "train"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics.topics[name])]
    for j, text in enumerate(p for p in paragraphs if len(p) >= 20):
      splits[split].append({"id": f"pydoc/{name}/{j}", "text": text})
  return splits


def write_jsonl(path: str, documents: list[dict[str, str]]) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"  # per process: N hosts may write it at once
  with open(tmp, "w", encoding="utf-8") as f:
    for doc in documents:
      f.write(json.dumps(doc) + "\n")
  os.replace(tmp, path)  # never leave a half-written file under the real name


def build_pydoc_corpus(out_dir: str) -> dict[str, str]:
  """Writes `pydoc_{train,validation}.jsonl` into out_dir (once) and returns paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {s: os.path.join(out_dir, f"pydoc_{s}.jsonl") for s in ("train", "validation")}
  if not all(os.path.exists(p) for p in paths.values()):
    for split, docs in pydoc_documents().items():
      write_jsonl(paths[split], docs)
  return paths


def read_jsonl_texts(path: str, field: str = "text") -> list[str]:
  """Reads the `field` of every JSON line; malformed lines are counted and skipped."""
  texts, bad = [], 0
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        texts.append(json.loads(line)[field])
      except (json.JSONDecodeError, KeyError, TypeError):
        bad += 1
  if bad:
    import logging  # pylint: disable=g-import-not-at-top
    logging.warning("%s: skipped %d malformed line(s) without a %r field", path, bad, field)
  return texts


def read_jsonl_documents(path: str) -> list[tuple[str, str]]:
  """(prompt, completion) of every JSON line: {"text": t} is ("", t),
  {"prompt": p, "completion": c} is (p, c). Malformed lines (bad JSON, neither
  form, non-string fields) are counted and skipped, with a warning naming the
  file and the first bad line."""
  docs, bad, first_bad = [], 0, 0
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        pair = (("", rec["text"]) if "text" in rec else (rec["prompt"], rec["completion"]))
        if not all(isinstance(x, str) for x in pair):
          raise TypeError
        docs.append(pair)
      except (json.JSONDecodeError, KeyError, TypeError):
        bad += 1
        first_bad = first_bad or lineno
  if bad:
    import logging  # pylint: disable=g-import-not-at-top
    logging.warning("%s: skipped %d malformed line(s) (first: line %d) without a 'text' or "
                    "'prompt'+'completion' string field", path, bad, first_bad)
  return docs


def unigram_entropy_nats(texts: list[str]) -> float:
  """Entropy of the byte unigram distribution, in nats per byte."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  counts = np.zeros(256, np.float64)
  for t in texts:
    counts += np.bincount(np.frombuffer(t.encode("utf-8"), np.uint8), minlength=256)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())
