"""A verifiable-reward task: n-digit addition written as text.

A problem is a pair (a, b) of integers with `digits` digits each; its prompt
is "a+b=" and a completion y earns reward r(x, y) = 1 when y (up to the stop
token, whitespace stripped) is exactly the decimal a + b, else 0. With
`reverse=True` the sum is written least-significant digit first (12+39=15
for 51), the order in which each digit depends only on the operands' digits
at that place and the carry already written: a small transformer learns it in
far fewer steps.

Flagged wrong answers. A corpus of correct sums only never shows the LM a wrong
answer, so nothing in training makes its hidden states register one. With
`flag_fraction` rho > 0, each problem also gets, with probability rho, a
second document with a wrong answer (one digit of the sum replaced) followed
by FLAG ("12+39=16!"), as pretraining text mixes errors with their marks. The
LM then predicts p(FLAG | x, y) after an answer y, a quantity a linear probe
on the hidden state at y's last token can read. Generation stops at EOS or
FLAG; the reward looks only at the text before the stop. The LM is
trained on documents "a+b=c" (one per JSONL line, `data.source=files`); the
probe's training problems and the held-out test problems are disjoint from
the LM's training problems and from each other.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

Problem = tuple[int, int]


def all_problems(digits: int) -> int:
  """How many distinct problems there are with `digits`-digit operands."""
  lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10 ** digits
  return (hi - lo) ** 2


def sample_splits(digits: int, sizes: dict[str, int], seed: int) -> dict[str, list[Problem]]:
  """Disjoint sets of distinct problems, one per entry of `sizes` (name -> count)."""
  if digits < 1:
    raise ValueError(f"digits={digits} must be >= 1")
  lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10 ** digits
  width = hi - lo
  total = sum(int(n) for n in sizes.values())
  if total > width * width:
    raise ValueError(f"asked for {total} distinct {digits}-digit problems; only "
                     f"{width * width} exist")
  rng = np.random.default_rng(seed)
  codes = rng.choice(width * width, size=total, replace=False)
  out, start = {}, 0
  for name, n in sizes.items():
    part = codes[start:start + int(n)]
    out[name] = [(int(lo + c // width), int(lo + c % width)) for c in part]
    start += int(n)
  return out


def prompt(problem: Problem) -> str:
  return f"{problem[0]}+{problem[1]}="


def answer(problem: Problem, reverse: bool = False) -> str:
  text = str(problem[0] + problem[1])
  return text[::-1] if reverse else text


def document(problem: Problem, reverse: bool = False) -> str:
  return prompt(problem) + answer(problem, reverse)


def reward(problem: Problem, completion: str, reverse: bool = False) -> float:
  """1.0 iff the completion is exactly the sum (surrounding whitespace ignored)."""
  return float(completion.strip() == answer(problem, reverse))


FLAG = "!"


def wrong_answer(problem: Problem, rng: np.random.Generator, reverse: bool = False) -> str:
  """The answer with one digit replaced by a different one."""
  text = list(answer(problem, reverse))
  i = int(rng.integers(len(text)))
  text[i] = str((int(text[i]) + int(rng.integers(1, 10))) % 10)
  return "".join(text)


def documents(problems: Sequence[Problem], reverse: bool = False, flag_fraction: float = 0.0,
              seed: int = 0) -> list[str]:
  """One correct document per problem, plus a flagged wrong one with
  probability `flag_fraction` (placed right after it)."""
  rng = np.random.default_rng(seed)
  out = []
  for p in problems:
    out.append(document(p, reverse))
    if flag_fraction > 0 and rng.random() < flag_fraction:
      out.append(prompt(p) + wrong_answer(p, rng, reverse) + FLAG)
  return out


def write_jsonl(path: str, problems: Sequence[Problem], reverse: bool = False,
                flag_fraction: float = 0.0, seed: int = 0) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for text in documents(problems, reverse, flag_fraction, seed):
      f.write(json.dumps({"text": text}) + "\n")
  return path
