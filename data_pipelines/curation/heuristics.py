"""DCLM-Baseline / RefinedWeb / Gopher heuristics as small pure functions.

A *rule* is `rule(text, c) -> None | str`: None keeps the document, a string
removes it and says why (the measured value against its threshold). A *line
modifier* is `modifier(text, c) -> text`. `c` is the `heuristics` or
`line_modifiers` sub-config (curation_config.py holds every threshold).

Word notions follow DCLM: "words" for length and repetition are runs of word
characters with punctuation dropped (`split_words`); the symbol, mean-length,
alphabetic and stop-word rules split on white space, as DCLM does.
"""
from __future__ import annotations

import collections
import functools
import re
from typing import Callable, NamedTuple, Optional
from urllib.parse import urlsplit

import numpy as np

Verdict = Optional[str]

_WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
_PARA_RE = re.compile(r"\n\s*\n")


def split_words(text: str) -> list[str]:
  """Words without punctuation, e.g. "don't stop." -> ["don't", "stop"]."""
  return _WORD_RE.findall(text)


def _lines(text: str) -> list[str]:
  return [l for l in (s.strip() for s in text.split("\n")) if l]


def _paragraphs(text: str) -> list[str]:
  return [p for p in (s.strip() for s in _PARA_RE.split(text)) if p]


# ----------------------------------------------------------------------------
# Gopher quality rules.

def page_length(text: str, c, words: Optional[list[str]] = None) -> Verdict:
  """Number of words (punctuation ignored) must lie in [min_words, max_words]."""
  n = len(split_words(text) if words is None else words)
  if n < c.min_words:
    return f"{n} words < {c.min_words}"
  if n > c.max_words:
    return f"{n} words > {c.max_words}"
  return None


def mean_word_length(text: str, c) -> Verdict:
  """Mean length of white-space separated words must lie in [min, max]."""
  words = text.split()
  if not words:
    return "no words"
  mean = sum(map(len, words)) / len(words)
  if mean < c.min_mean_word_length:
    return f"mean word length {mean:.2f} < {c.min_mean_word_length}"
  if mean > c.max_mean_word_length:
    return f"mean word length {mean:.2f} > {c.max_mean_word_length}"
  return None


_SYMBOLS = ("#", "...", ". . .", "\u2026")


def symbol_ratio(text: str, c) -> Verdict:
  """(# hashes + # ellipses) / # words must be <= max_symbol_to_word_ratio."""
  n_words = len(text.split())
  if n_words == 0:
    return "no words"
  ratio = sum(text.count(s) for s in _SYMBOLS) / n_words
  if ratio > c.max_symbol_to_word_ratio:
    return f"symbol/word {ratio:.3f} > {c.max_symbol_to_word_ratio}"
  return None


_BULLETS = ("\u25cf", "\u2022", "*", "-")


def bullet_lines(text: str, c) -> Verdict:
  """Fraction of lines starting with a bullet must be <= max_bullet_lines_ratio."""
  lines = _lines(text)
  if not lines:
    return "no lines"
  ratio = sum(l.startswith(_BULLETS) for l in lines) / len(lines)
  if ratio > c.max_bullet_lines_ratio:
    return f"bullet lines {ratio:.3f} > {c.max_bullet_lines_ratio}"
  return None


_ELLIPSES = ("...", ". . .", "\u2026")


def ellipsis_lines(text: str, c) -> Verdict:
  """Fraction of lines ending in an ellipsis must be <= max_ellipsis_lines_ratio."""
  lines = _lines(text)
  if not lines:
    return "no lines"
  ratio = sum(l.endswith(_ELLIPSES) for l in lines) / len(lines)
  if ratio > c.max_ellipsis_lines_ratio:
    return f"ellipsis lines {ratio:.3f} > {c.max_ellipsis_lines_ratio}"
  return None


def non_alpha_words(text: str, c) -> Verdict:
  """Fraction of words with no alphabetic character must be <= max (0.2)."""
  words = text.split()
  if not words:
    return "no words"
  ratio = sum(not any(ch.isalpha() for ch in w) for w in words) / len(words)
  if ratio > c.max_non_alpha_words_ratio:
    return f"non-alphabetic words {ratio:.3f} > {c.max_non_alpha_words_ratio}"
  return None


def stop_words(text: str, c, stop_words_set: frozenset[str]) -> Verdict:
  """At least min_stop_words occurrences (not unique) of the stop words."""
  count = 0
  for w in text.split():
    if w.lower() in stop_words_set:
      count += 1
      if count >= c.min_stop_words:
        return None
  return f"{count} stop words < {c.min_stop_words}"


# ----------------------------------------------------------------------------
# Gopher repetition statistics (Rae et al. 2021, Table A1).

def duplicate_segment_fractions(segments: list[str]) -> tuple[float, float]:
  """(fraction of segments that occur more than once, fraction of their chars).

  Every occurrence of a repeated segment counts, the first one included:
  segs [a, a, b] -> (2/3, 2 len(a) / (2 len(a) + len(b))).
  """
  if len(segments) <= 1:
    return 0.0, 0.0
  counts = collections.Counter(segments)
  total_chars = sum(map(len, segments))
  dup = sum(n for n in counts.values() if n > 1)
  dup_chars = sum(len(s) * n for s, n in counts.items() if n > 1)
  return dup / len(segments), (dup_chars / total_chars if total_chars else 0.0)


def _ngram_ids(words: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
  """(id of each n-gram occurrence, count of each id) with ids from np.unique
  over 64-bit rolling hashes of interned word ids (collisions ~ 2^-64)."""
  vocab: dict[str, int] = {}
  w = np.fromiter((vocab.setdefault(x, len(vocab)) for x in words), dtype=np.uint64, count=len(words))
  m = len(w) - n + 1
  h = np.zeros(m, dtype=np.uint64)
  with np.errstate(over="ignore"):
    for j in range(n):
      h = h * np.uint64(0x100000001B3) + (w[j:j + m] + np.uint64(1))
  _, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
  return inverse.reshape(-1), counts


def _window_chars(words: list[str], n: int) -> np.ndarray:
  """Word characters of every n-word window."""
  c = np.concatenate([[0], np.cumsum([len(x) for x in words])])
  return c[n:] - c[:-n]


def top_ngram_char_fraction(words: list[str], n: int) -> float:
  """Chars (word chars only) covered by the most frequent n-gram over all word chars.

  If no n-gram repeats the fraction is 0; among equally frequent n-grams the
  longest counts.
  """
  total = sum(map(len, words))
  if len(words) < n or total == 0:
    return 0.0
  inverse, counts = _ngram_ids(words, n)
  top = counts.max()
  if top <= 1:
    return 0.0
  longest = _window_chars(words, n)[counts[inverse] == top].max()
  return float(longest) * float(top) / total


def duplicate_ngram_char_fraction(words: list[str], n: int) -> float:
  """Chars of words covered by any n-gram occurring more than once, over all word chars.

  Words covered by several repeated n-grams count once.
  """
  total = sum(map(len, words))
  if len(words) < n or total == 0:
    return 0.0
  inverse, counts = _ngram_ids(words, n)
  starts = (counts[inverse] > 1).astype(np.int64)
  covered = np.convolve(starts, np.ones(n, dtype=np.int64))[:len(words)] > 0
  lengths = np.fromiter((len(x) for x in words), dtype=np.int64, count=len(words))
  return float(lengths[covered].sum()) / total


def _segment_rule(split: Callable[[str], list[str]], which: int, key: str, what: str):
  def rule(text: str, c) -> Verdict:
    value = duplicate_segment_fractions(split(text))[which]
    limit = c[key]
    return f"{what} {value:.3f} > {limit}" if value > limit else None
  rule.__name__ = key.replace("max_", "")
  return rule


dup_line_frac = _segment_rule(_lines, 0, "max_dup_line_frac", "duplicate lines")
dup_para_frac = _segment_rule(_paragraphs, 0, "max_dup_para_frac", "duplicate paragraphs")
dup_line_char_frac = _segment_rule(_lines, 1, "max_dup_line_char_frac", "duplicate-line chars")
dup_para_char_frac = _segment_rule(_paragraphs, 1, "max_dup_para_char_frac",
                                   "duplicate-paragraph chars")


def top_ngram(n: int):
  def rule(text: str, c, words: Optional[list[str]] = None) -> Verdict:
    value = top_ngram_char_fraction(split_words(text) if words is None else words, n)
    limit = c.max_top_ngram_char_frac[str(n)]
    return f"top {n}-gram chars {value:.3f} > {limit}" if value > limit else None
  rule.__name__ = f"top_{n}gram"
  return rule


def dup_ngram(n: int):
  def rule(text: str, c, words: Optional[list[str]] = None) -> Verdict:
    value = duplicate_ngram_char_fraction(split_words(text) if words is None else words, n)
    limit = c.max_dup_ngram_char_frac[str(n)]
    return f"duplicate {n}-gram chars {value:.3f} > {limit}" if value > limit else None
  rule.__name__ = f"dup_{n}gram"
  return rule


class Rule(NamedTuple):
  name: str
  fn: Callable[..., Verdict]
  needs_words: bool = False   # takes the shared split_words list (saves re-splitting)
  needs_stop_words: bool = False


def quality_rules(c) -> list[Rule]:
  """The document rules in DCLM's order; n-gram rules for the configured n."""
  rules = [Rule("page_length", page_length, needs_words=True), Rule("mean_word_length", mean_word_length),
           Rule("symbol_ratio", symbol_ratio), Rule("bullet_lines", bullet_lines),
           Rule("ellipsis_lines", ellipsis_lines), Rule("non_alpha_words", non_alpha_words),
           Rule("stop_words", stop_words, needs_stop_words=True),
           Rule("dup_line_frac", dup_line_frac), Rule("dup_para_frac", dup_para_frac),
           Rule("dup_line_char_frac", dup_line_char_frac),
           Rule("dup_para_char_frac", dup_para_char_frac)]
  for n in sorted(map(int, c.max_top_ngram_char_frac)):
    rules.append(Rule(f"top_{n}gram", top_ngram(n), needs_words=True))
  for n in sorted(map(int, c.max_dup_ngram_char_frac)):
    rules.append(Rule(f"dup_{n}gram", dup_ngram(n), needs_words=True))
  return rules


def apply_rules(text: str, c, rules: list[Rule], stop_words_set: frozenset[str]
                ) -> tuple[Optional[str], Verdict]:
  """First failing rule: (rule name, reason), or (None, None) if all pass."""
  words = None
  for rule in rules:
    if rule.needs_words:
      words = split_words(text) if words is None else words
      verdict = rule.fn(text, c, words)
    elif rule.needs_stop_words:
      verdict = rule.fn(text, c, stop_words_set)
    else:
      verdict = rule.fn(text, c)
    if verdict is not None:
      return rule.name, verdict
  return None, None


# ----------------------------------------------------------------------------
# RefinedWeb line modifiers. Empty lines are kept (they separate paragraphs).

def _map_lines(text: str, keep: Callable[[str], bool]) -> str:
  return "\n".join(l for l in text.split("\n") if not l.strip() or keep(l)).strip()


def uppercase_lines(text: str, c) -> str:
  """Drops lines whose share of upper-case characters exceeds max_uppercase_ratio."""
  return _map_lines(text, lambda l: sum(ch.isupper() for ch in l) / len(l) <= c.max_uppercase_ratio)


def numeric_lines(text: str, c) -> str:
  """Drops lines whose share of digits exceeds max_numeric_ratio (all-digit lines)."""
  return _map_lines(text, lambda l: sum(ch.isdigit() for ch in l) / len(l) <= c.max_numeric_ratio)


_COUNTER_RE = re.compile(
    r"^\W*\d[\d,.]*\s*[kmb]?\s+(?:likes?|shares?|comments?|retweets?|reposts?|quotes?|"
    r"bookmarks?|upvotes?|downvotes?|downloads?|views?|followers?|replies|reply)\W*$")


def counter_lines(text: str, c) -> str:
  """Drops social-media counter lines such as "1.2K views" or "34 likes"."""
  if not c.remove_counters:
    return text
  return _map_lines(text, lambda l: not _COUNTER_RE.match(l.strip().lower()))


def short_lines(text: str, c) -> str:
  """Drops lines with fewer than min_line_words white-space words."""
  return _map_lines(text, lambda l: len(l.split()) >= c.min_line_words)


@functools.lru_cache(maxsize=64)
def _phrase_pattern(phrase: str, location: str) -> re.Pattern:
  p = re.escape(phrase)
  p = {"prefix": rf"^{p}\s?", "suffix": rf"\s?{p}$", "any": rf"\s?{p}"}[location]
  return re.compile(p, re.IGNORECASE)


def boilerplate_phrases(text: str, c) -> str:
  """Removes boilerplate phrases ("items in cart", "Read more...", "Sign-in")
  from lines of at most boilerplate_max_words words; a line left empty goes."""
  patterns = [_phrase_pattern(p, loc) for p, loc in c.boilerplate]
  low = text.lower()
  if not any(p.lower().replace("...", "") in low for p, _ in c.boilerplate):
    return text.strip()
  out = []
  for line in text.split("\n"):
    if line.strip() and len(line.split()) <= c.boilerplate_max_words:
      new = line
      for pat in patterns:
        new = pat.sub("", new)
      if not new.strip():
        continue
      line = new
    out.append(line)
  return "\n".join(out).strip()


LINE_MODIFIERS = (uppercase_lines, numeric_lines, counter_lines, short_lines, boilerplate_phrases)


def removed_words(words_before: int, text_after: str, c) -> Verdict:
  """The fraction of words the line modifiers removed must be <= max_removed_word_ratio."""
  if words_before == 0:
    return "no words"
  ratio = (words_before - len(split_words(text_after))) / words_before
  if ratio > c.max_removed_word_ratio:
    return f"line modifiers removed {ratio:.3f} > {c.max_removed_word_ratio} of words"
  return None


# ----------------------------------------------------------------------------
# Document modifiers run before language identification.

_URL_RE = re.compile(r"\s{0,10}(?:(?:https?|ftp)://|www\.)[^\s<>\"']+", re.IGNORECASE)
_IPV4_RE = re.compile(r"\s{0,10}\b(?:\d{1,3}\.){3}\d{1,3}\b(?::\d+)?[^\s<>\"']*")


def remove_urls(text: str) -> str:
  """Removes URLs (scheme:// or www.) and IPv4 addresses from the text."""
  return _IPV4_RE.sub("", _URL_RE.sub("", text))


def limit_newlines(text: str, max_consecutive: int) -> str:
  """Collapses runs of more than max_consecutive newlines."""
  return re.sub(r"\n{%d,}" % (max_consecutive + 1), "\n" * max_consecutive, text)


# ----------------------------------------------------------------------------
# RefinedWeb URL filtering.

class UrlBanlists(NamedTuple):
  domains: frozenset[str]
  strict: tuple[str, ...]   # substrings of the URL with '-' and '.' removed
  hard: frozenset[str]      # whole URL words
  soft: frozenset[str]      # whole URL words; >= soft_min_matches distinct hits
  soft_min_matches: int = 2


def read_list(path: str) -> list[str]:
  """One entry per line; blank lines and '#' comments are skipped; lower-cased."""
  if not path:
    return []
  with open(path, encoding="utf-8") as f:
    return [l.strip().lower() for l in f if l.strip() and not l.lstrip().startswith("#")]


def load_banlists(c) -> UrlBanlists:
  return UrlBanlists(frozenset(read_list(c.banned_domains)), tuple(read_list(c.banned_words_strict)),
                     frozenset(read_list(c.banned_words_hard)),
                     frozenset(read_list(c.banned_words_soft)), int(c.soft_min_matches))


def url_domain(url: str) -> str:
  """Lower-case host without port and without a leading 'www.'."""
  try:
    host = (urlsplit(url if "//" in url else "//" + url).hostname or "").lower()
  except ValueError:
    return ""
  return host[4:] if host.startswith("www.") else host


_URL_WORD_RE = re.compile(r"[a-z0-9]+")


def url_filter(url: str, banlists: UrlBanlists) -> tuple[Optional[str], Verdict]:
  """(rule name, reason) of the first URL rule that bans `url`, else (None, None)."""
  if not url:
    return None, None
  low = url.lower()
  domain = url_domain(low)
  if domain in banlists.domains:
    return "url_domain", f"banned domain {domain}"
  squashed = low.replace("-", "").replace(".", "")
  for w in banlists.strict:
    if w in squashed:
      return "url_strict_word", f"banned substring {w!r}"
  words = set(_URL_WORD_RE.findall(low))
  hard = sorted(words & banlists.hard)
  if hard:
    return "url_hard_word", f"banned word {hard[0]!r}"
  soft = sorted(words & banlists.soft)
  if len(soft) >= banlists.soft_min_matches:
    return "url_soft_words", f"{len(soft)} soft-banned words {soft}"
  return None, None
