"""Writes in-context-learning task files (llm-foundry / DCLM jsonl) from offline text.

  python -m tools.make_icl_tasks --out_dir=~/.cache/armillary/data/icl_tasks

Sources, both in every CPython install, so nothing is downloaded:
  docstrings  the prose paragraphs of the docstrings of the standard library's
              top-level modules (read with `ast`, never imported): not in the
              quickstart's training text (pydoc_data topics);
  pydoc       the language reference topics (`data_pipelines.corpus`), the
              quickstart's own corpus: the topic task measures what a model
              knows of that text, it is not held out.
Tasks (each example drawn by a generator seeded with --seed):
  docstring_last_word      language_modeling  previous sentence + a sentence without its
                                              last word -> that word (LAMBADA-style)
  docstring_next_sentence  multiple_choice    a sentence -> its true successor among 4
                                              (3 sentences of other paragraphs)
  docstring_word_swap      schema             a sentence's prefix ending in its own word or
                                              a random word -> the shared rest of the sentence
  pydoc_topic              multiple_choice    a reference paragraph -> its topic name among 4
Also writes `core_tasks.json`, the task list (`icl_tasks`) the CORE runner reads.
"""
from __future__ import annotations

import ast
import json
import os
import re
import sys
import sysconfig
from typing import Any, Iterable

import numpy as np
from absl import app, flags

from data_pipelines import corpus

TASKS_FILE = "core_tasks.json"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z]{4,}$")
# version of the generation rules: part of the output folder's stamp
GENERATOR_VERSION = 1


def stdlib_docstring_paragraphs(limit_files: int = 0) -> list[str]:
  """Prose paragraphs of the docstrings of the standard library's top-level modules."""
  root = sysconfig.get_paths()["stdlib"]
  names = sorted(n for n in os.listdir(root) if n.endswith(".py") and not n.startswith("_"))
  if limit_files:
    names = names[:limit_files]
  out = []
  for name in names:
    try:
      with open(os.path.join(root, name), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, OSError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc:
          out.extend(prose_paragraphs(doc))
  return out


def prose_paragraphs(text: str) -> list[str]:
  """Blank-line separated paragraphs that read as prose (no code, no tables), one line each."""
  out = []
  for para in re.split(r"\n\s*\n", text):
    lines = para.split("\n")
    if any(l.startswith((" ", "\t", ">>>", "-", "*", "=", ":")) for l in lines):
      continue
    flat = " ".join(l.strip() for l in lines)
    letters = sum(c.isalpha() or c == " " for c in flat)
    if len(flat) >= 40 and letters >= 0.85 * len(flat):
      out.append(flat)
  return out


def sentences(paragraph: str) -> list[str]:
  return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _good_sentence(s: str) -> bool:
  return 30 <= len(s) <= 200 and len(s.split()) >= 6


def last_word_examples(paragraphs: list[str], rng: np.random.Generator, n: int) -> list[dict]:
  cands = []
  for para in paragraphs:
    sents = sentences(para)
    for i, s in enumerate(sents):
      words = s.rstrip(".!?").split()
      if not _good_sentence(s) or not _WORD.match(words[-1]):
        continue
      prefix = (sents[i - 1] + " " if i > 0 and len(sents[i - 1]) <= 200 else "")
      cands.append({"context": prefix + " ".join(words[:-1]), "continuation": words[-1]})
  return _sample(cands, rng, n)


def next_sentence_examples(paragraphs: list[str], rng: np.random.Generator, n: int,
                           num_choices: int = 4) -> list[dict]:
  pairs, pool = [], []
  for p, para in enumerate(paragraphs):
    sents = [s for s in sentences(para) if _good_sentence(s)]
    pool.extend((p, s) for s in sents)
    pairs.extend((p, a, b) for a, b in zip(sents, sents[1:]))
  out = []
  for j in rng.permutation(len(pairs))[:n]:
    p, a, b = pairs[j]
    others = []
    while len(others) < num_choices - 1:
      q, s = pool[int(rng.integers(len(pool)))]
      if q != p and s not in others and s != b:
        others.append(s)
    gold = int(rng.integers(num_choices))
    choices = others[:gold] + [b] + others[gold:]
    out.append({"query": a, "choices": choices, "gold": gold})
  return out


def word_swap_examples(paragraphs: list[str], rng: np.random.Generator, n: int) -> list[dict]:
  words_pool = sorted({w for para in paragraphs for w in para.split() if _WORD.match(w)})
  cands = []
  for para in paragraphs:
    for s in sentences(para):
      words = s.split()
      if not _good_sentence(s) or len(words) < 8:
        continue
      spots = [j for j in range(2, len(words) - 3) if _WORD.match(words[j])]
      if spots:
        cands.append((words, spots))
  out = []
  for j in rng.permutation(len(cands))[:n]:
    words, spots = cands[j]
    k = spots[int(rng.integers(len(spots)))]
    swap = words[k]
    while swap.lower() == words[k].lower():
      swap = words_pool[int(rng.integers(len(words_pool)))]
    gold = int(rng.integers(2))
    options = [" ".join(words[:k] + [words[k]]), " ".join(words[:k] + [swap])]
    if gold == 1:
      options.reverse()
    out.append({"context_options": options, "continuation": " ".join(words[k + 1:]),
                "gold": gold})
  return out


def topic_examples(rng: np.random.Generator, n: int, num_choices: int = 4,
                   max_chars: int = 240) -> list[dict]:
  docs = [d for split in corpus.pydoc_documents().values() for d in split]
  topics = sorted({d["id"].split("/")[1] for d in docs})
  out = []
  for j in rng.permutation(len(docs))[:n]:
    doc = docs[j]
    topic = doc["id"].split("/")[1]
    text = " ".join(doc["text"].split())
    if len(text) > max_chars:
      text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
    others = [t for t in rng.permutation(topics) if t != topic][:num_choices - 1]
    gold = int(rng.integers(num_choices))
    choices = list(others[:gold]) + [topic] + list(others[gold:])
    out.append({"query": f"Text: {text}\nTopic:", "choices": [str(c) for c in choices],
                "gold": gold})
  return out


def _sample(items: list[Any], rng: np.random.Generator, n: int) -> list[Any]:
  return [items[int(i)] for i in rng.permutation(len(items))[:n]]


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)


def task_list(num_fewshot: tuple[int, ...]) -> list[dict[str, Any]]:
  shots = list(num_fewshot)
  return [
      dict(label="docstring_last_word", dataset_uri="docstring_last_word.jsonl",
           icl_task_type="language_modeling", num_fewshot=shots, continuation_delimiter=" ",
           example_delimiter="\n"),
      dict(label="docstring_next_sentence", dataset_uri="docstring_next_sentence.jsonl",
           icl_task_type="multiple_choice", num_fewshot=shots, continuation_delimiter=" ",
           example_delimiter="\n"),
      dict(label="docstring_word_swap", dataset_uri="docstring_word_swap.jsonl",
           icl_task_type="schema", num_fewshot=shots, continuation_delimiter=" ",
           example_delimiter="\n"),
      dict(label="pydoc_topic", dataset_uri="pydoc_topic.jsonl",
           icl_task_type="multiple_choice", num_fewshot=shots, continuation_delimiter=" ",
           example_delimiter="\n\n"),
  ]


def build_tasks(out_dir: str, *, num_examples: int = 300, seed: int = 0,
                num_fewshot: tuple[int, ...] = (0, 2), limit_files: int = 0) -> str:
  """Writes the task files and `core_tasks.json` into out_dir; returns the latter's path.
  Skips the work when a complete set with the same settings is already there."""
  out_dir = os.path.expanduser(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  stamp = {"version": GENERATOR_VERSION, "num_examples": num_examples, "seed": seed,
           "num_fewshot": list(num_fewshot), "limit_files": limit_files,
           "python": sys.version.split()[0]}
  tasks_path = os.path.join(out_dir, TASKS_FILE)
  if os.path.exists(tasks_path):
    with open(tasks_path, encoding="utf-8") as f:
      if json.load(f).get("generated_by") == stamp:
        return tasks_path
  paragraphs = stdlib_docstring_paragraphs(limit_files)
  rngs = [np.random.default_rng((seed, i)) for i in range(4)]
  write_jsonl(os.path.join(out_dir, "docstring_last_word.jsonl"),
              last_word_examples(paragraphs, rngs[0], num_examples))
  write_jsonl(os.path.join(out_dir, "docstring_next_sentence.jsonl"),
              next_sentence_examples(paragraphs, rngs[1], num_examples))
  write_jsonl(os.path.join(out_dir, "docstring_word_swap.jsonl"),
              word_swap_examples(paragraphs, rngs[2], num_examples))
  write_jsonl(os.path.join(out_dir, "pydoc_topic.jsonl"), topic_examples(rngs[3], num_examples))
  tmp = tasks_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"generated_by": stamp, "icl_tasks": task_list(num_fewshot)}, f, indent=2)
  os.replace(tmp, tasks_path)   # last: its presence means the set is complete
  return tasks_path


_OUT = flags.DEFINE_string("out_dir", "~/.cache/armillary/data/icl_tasks", "Output folder.")
_N = flags.DEFINE_integer("num_examples", 300, "Examples per task (at most).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_SHOTS = flags.DEFINE_list("num_fewshot", ["0", "2"], "Shot counts written into the task list.")


def main(argv):
  del argv
  path = build_tasks(_OUT.value, num_examples=_N.value, seed=_SEED.value,
                     num_fewshot=tuple(int(k) for k in _SHOTS.value))
  with open(path, encoding="utf-8") as f:
    tasks = json.load(f)["icl_tasks"]
  for t in tasks:
    with open(os.path.join(os.path.dirname(path), t["dataset_uri"]), encoding="utf-8") as f:
      print(f"{t['label']:<26} {t['icl_task_type']:<18} {sum(1 for _ in f):>5} examples")
  print(f"task list: {path}")


if __name__ == "__main__":
  app.run(main)
