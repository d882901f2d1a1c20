"""Synthetic in-context classification: random rules over token features.

A sequence (one document) draws its own rule, then n examples of it:

  rule:     a relevant feature p ~ U{0, ..., F-1} and a labelling
            f: A -> Y, f(a) ~ U(Y) independently for each symbol a of the
            alphabet A (|Y| = m labels);
  example:  x = (x_1, ..., x_F), x_j ~ U(A) i.i.d.; the label is
            y = f(x_p) with probability 1 - eps, else one of the other m - 1
            labels uniformly (label noise eps).

Rendered as text, one example per `example_delimiter`-separated piece, in one
of two ways (`rendering`):
  pair   "x_1..x_F<continuation_delimiter>y": the query is "x_1..x_F<delim>"
         and the label characters are the candidates;
  joint  (F = 1, two labels) one character per example, the symbol in lower
         case for label 0 and upper case for label 1 ("aBcC..."); the prompt
         is the shots alone and the candidates are the query symbol's two
         cases, so p(y | x^q, shots) = p(case y of x^q) / sum over both cases
         of the next-character probabilities. A single attention layer that
         pools the previous characters can solve it, where the pair format
         needs an induction circuit (two layers) and far more training.
A model trained on many sequences can only predict y from the examples
before it in the same sequence: the rule differs per sequence and is never
written down, so accuracy at shot count k (k earlier examples) measures
in-context learning, and 0-shot accuracy is 1/m.

Bayes-optimal predictor (the reference, perfectly calibrated by construction).
With uniform priors on p and on each f(a), and given shots (x^i, y^i),
i = 1..k, and a query x^q:
  P(y^q = y | D) = sum_p w_p sum_l P(f(x^q_p) = l | D, p) P(y | l),
  P(y | l) = 1 - eps if y = l else eps / (m - 1),
  P(f(a) = l | D, p) propto prod_{i: x^i_p = a} P(y^i | l),
  w_p propto prod_a (1/m) sum_l prod_{i: x^i_p = a} P(y^i | l).
Its 0-shot prediction is uniform, and it is calibrated: among queries it
gives confidence c, a fraction c is answered correctly (in expectation).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class RuleFamily:
  alphabet: str = "abcdefgh"
  num_features: int = 2         # F, symbols per x
  labels: str = "01"            # one character per label (single tokens for most vocabularies)
  noise: float = 0.1            # eps
  continuation_delimiter: str = ":"
  example_delimiter: str = "\n"
  rendering: str = "pair"       # pair | joint (module docstring)

  def __post_init__(self):
    if self.rendering not in ("pair", "joint"):
      raise ValueError(f"rendering={self.rendering!r} must be 'pair' or 'joint'")
    if self.rendering == "joint" and (self.num_features != 1 or len(self.labels) != 2 or
                                      not (self.alphabet.isalpha() and self.alphabet.islower())):
      raise ValueError("rendering='joint' needs num_features=1, two labels and a lower-case "
                       f"alphabet (got {self.num_features}, {self.labels!r}, {self.alphabet!r})")
    if len(set(self.alphabet)) != len(self.alphabet) or len(self.alphabet) < 2:
      raise ValueError(f"alphabet={self.alphabet!r} needs >= 2 distinct symbols")
    if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
      raise ValueError(f"labels={self.labels!r} needs >= 2 distinct labels")
    if set(self.labels) & set(self.alphabet):
      raise ValueError(f"labels={self.labels!r} and alphabet={self.alphabet!r} overlap")
    if not 0.0 <= self.noise < 1.0 - 1.0 / len(self.labels):
      raise ValueError(f"noise={self.noise} must be in [0, 1 - 1/m) so labels carry signal")
    if self.num_features < 1:
      raise ValueError(f"num_features={self.num_features} must be >= 1")


@dataclasses.dataclass
class Episode:
  """One sequence: symbol ids x [n, F], label ids y [n], its rule (p, f)."""
  x: np.ndarray
  y: np.ndarray
  feature: int
  labelling: np.ndarray


def sample_episode(family: RuleFamily, num_examples: int, rng: np.random.Generator) -> Episode:
  a, m = len(family.alphabet), len(family.labels)
  feature = int(rng.integers(family.num_features))
  labelling = rng.integers(m, size=a)
  x = rng.integers(a, size=(num_examples, family.num_features))
  clean = labelling[x[:, feature]]
  flip = rng.random(num_examples) < family.noise
  other = (clean + rng.integers(1, m, size=num_examples)) % m  # uniform over the m - 1 others
  y = np.where(flip, other, clean)
  return Episode(x=x, y=y, feature=feature, labelling=labelling)


def render_example(family: RuleFamily, x: np.ndarray, y: int | None = None) -> str:
  """pair: "x_1..x_F:" (query) or "x_1..x_F:y" (a shot); joint: the shot's one
  character (a query renders as "": it is not in the prompt)."""
  if family.rendering == "joint":
    if y is None:
      return ""
    c = family.alphabet[int(x[0])]
    return c.upper() if int(y) == 1 else c
  text = "".join(family.alphabet[int(s)] for s in x) + family.continuation_delimiter
  return text if y is None else text + family.labels[int(y)]


def candidates(family: RuleFamily, x: np.ndarray) -> list[str]:
  """The texts whose probabilities after the prompt give label 0, 1, ..., m-1."""
  if family.rendering == "joint":
    c = family.alphabet[int(x[0])]
    return [c, c.upper()]
  return list(family.labels)


def render_episode(family: RuleFamily, ep: Episode, upto: int | None = None) -> str:
  n = len(ep.y) if upto is None else upto
  return family.example_delimiter.join(render_example(family, ep.x[i], ep.y[i]) for i in range(n))


def prompt(family: RuleFamily, ep: Episode, k: int) -> tuple[str, int]:
  """(context with shots 0..k-1 and query k, gold label id): the query is example k."""
  shots = render_episode(family, ep, k)
  query = render_example(family, ep.x[k])
  if family.rendering == "joint":
    return (shots + family.example_delimiter if k else ""), int(ep.y[k])
  return (shots + family.example_delimiter + query if k else query), int(ep.y[k])


def bayes_predictive(family: RuleFamily, x: np.ndarray, y: np.ndarray,
                     query: np.ndarray) -> np.ndarray:
  """P(y^q = . | shots (x, y), query) under the rule prior (module docstring), [m]."""
  a, m, eps = len(family.alphabet), len(family.labels), family.noise
  lik = np.full((m, m), eps / (m - 1))   # lik[l, y] = P(y | f = l)
  np.fill_diagonal(lik, 1.0 - eps)
  with np.errstate(divide="ignore"):
    log_lik = np.log(lik)               # -inf where eps = 0
  log_w = np.zeros(family.num_features)
  post_q = np.zeros((family.num_features, m))
  for p in range(family.num_features):
    # counts[a, y] = number of shots with x_p = a and label y
    counts = np.zeros((a, m))
    if len(y):
      np.add.at(counts, (x[:, p], y), 1.0)
    # log_f[a, l] = log prod_i P(y^i | l) - log m, with 0 * log 0 = 0 (no such shot)
    with np.errstate(invalid="ignore"):
      terms = np.where(counts[:, None, :] > 0, counts[:, None, :] * log_lik[None], 0.0)
    log_f = terms.sum(axis=2) - np.log(m)
    top = log_f.max(axis=1, keepdims=True)
    if not np.all(np.isfinite(top)):     # the shots contradict every labelling under p
      log_w[p] = -np.inf
      continue
    log_norm = top[:, 0] + np.log(np.exp(log_f - top).sum(axis=1))
    log_w[p] = log_norm.sum()
    f_post = np.exp(log_f[query[p]] - log_norm[query[p]])      # P(f(x^q_p) = l | D, p)
    post_q[p] = f_post @ lik
  w = np.exp(log_w - log_w.max())
  w /= w.sum()
  return w @ post_q


def training_documents(family: RuleFamily, num_docs: int, examples_per_doc: int,
                       seed: int) -> Iterator[str]:
  rng = np.random.default_rng(seed)
  for _ in range(num_docs):
    yield render_episode(family, sample_episode(family, examples_per_doc, rng))


def write_training_files(family: RuleFamily, out_dir: str, *, train_docs: int,
                         validation_docs: int, examples_per_doc: int, seed: int) -> dict[str, str]:
  """JSONL files (`text` field) for `data.source=files`; written once per content."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for split, n, s in (("train", train_docs, seed), ("validation", validation_docs, seed + 1)):
    path = os.path.join(out_dir, f"icl_{split}.jsonl")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for text in training_documents(family, n, examples_per_doc, s):
        f.write(json.dumps({"text": text}) + "\n")
    os.replace(tmp, path)
    paths[split] = path
  return paths


@dataclasses.dataclass
class EvalSet:
  """Held-out episodes for evaluation at shot counts 0..K: the query of every
  shot count is the same example (index K), so shot counts differ only in context."""
  episodes: list[Episode]
  max_shots: int

  def prompts(self, family: RuleFamily, k: int) -> tuple[list[str], np.ndarray]:
    """Contexts with the last k shots before the query (k <= max_shots), gold ids."""
    texts, gold = [], []
    for ep in self.episodes:
      K = self.max_shots
      sub = Episode(x=np.concatenate([ep.x[K - k:K], ep.x[K:K + 1]]),
                    y=np.concatenate([ep.y[K - k:K], ep.y[K:K + 1]]),
                    feature=ep.feature, labelling=ep.labelling)
      t, g = prompt(family, sub, k)
      texts.append(t)
      gold.append(g)
    return texts, np.asarray(gold)

  def candidates(self, family: RuleFamily) -> list[list[str]]:
    """Per episode, the label texts of its query (the same for every k)."""
    return [candidates(family, ep.x[self.max_shots]) for ep in self.episodes]

  def bayes_probs(self, family: RuleFamily, k: int) -> np.ndarray:
    K = self.max_shots
    return np.stack([bayes_predictive(family, ep.x[K - k:K], ep.y[K - k:K], ep.x[K])
                     for ep in self.episodes])


def eval_set(family: RuleFamily, num_episodes: int, max_shots: int, seed: int) -> EvalSet:
  rng = np.random.default_rng(seed)
  return EvalSet([sample_episode(family, max_shots + 1, rng) for _ in range(num_episodes)],
                 max_shots)
