"""Offline language identification: multinomial naive Bayes on hashed
character n-grams (no downloaded model).

For a document with n-gram counts x_f (orders 1..4 of the lower-cased letters,
words padded by spaces, hashed into B buckets),

  log P(l | x) = log pi_l + sum_f x_f log theta_{l,f} - log Z,
  theta_{l,f} = (N_{l,f} + alpha) / (sum_g N_{l,g} + alpha B),

with N the training counts and a uniform prior pi. The shipped model
(curation_configs/langid_nb.npz) is trained by `python -m
data_pipelines.curation.langid --out=...` from text on this machine: the
translated message catalogues (gettext .mo files under /usr/share/locale,
whose msgstr are the target language and msgid English) and Python's own
pydoc topics for English prose.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Iterable, Mapping, NamedTuple

import numpy as np

_NON_LETTER = re.compile(r"[\W\d_]+")
_FORMAT_SPEC = re.compile(r"%[-+ #0-9.]*[a-zA-Z]|\{[^}]*\}|&(?=\w)|_(?=\w)")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(1_000_003)


class LangIdModel(NamedTuple):
  langs: tuple[str, ...]
  log_theta: np.ndarray   # [L, B] float32
  orders: tuple[int, ...]
  bits: int


def normalise(text: str) -> str:
  return " " + _NON_LETTER.sub(" ", text.lower()).strip() + " "


def ngram_buckets(text: str, orders: Iterable[int], bits: int) -> np.ndarray:
  """Bucket ids (uint64) of all character n-grams of the normalised text.

  Polynomial hash of code points, h = sum_j c_{i+j} BASE^(n-1-j) + n (mod 2^64),
  then multiplicative hashing to `bits` bits.
  """
  cp = np.frombuffer(normalise(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
  out = []
  with np.errstate(over="ignore"):
    for n in orders:
      if len(cp) < n:
        continue
      h = np.zeros(len(cp) - n + 1, dtype=np.uint64)
      for j in range(n):
        h = h * _BASE + cp[j:len(cp) - n + 1 + j]
      h = h + np.uint64(n)
      out.append((h * _MIX) >> np.uint64(64 - bits))
  return np.concatenate(out) if out else np.zeros(0, np.uint64)


def feature_counts(text: str, orders: Iterable[int], bits: int) -> np.ndarray:
  return np.bincount(ngram_buckets(text, orders, bits).astype(np.int64), minlength=1 << bits)


def train(texts: Mapping[str, Iterable[str]], orders=(1, 2, 3, 4), bits: int = 15,
          alpha: float = 0.5) -> tuple[LangIdModel, np.ndarray]:
  """Fits the model; returns it and the raw counts N [L, B] (what gets saved)."""
  langs = tuple(sorted(texts))
  counts = np.zeros((len(langs), 1 << bits), dtype=np.int64)
  for i, lang in enumerate(langs):
    for t in texts[lang]:
      counts[i] += feature_counts(t, orders, bits)
  return from_counts(langs, counts, orders, bits, alpha), counts


def from_counts(langs, counts: np.ndarray, orders, bits: int, alpha: float = 0.5) -> LangIdModel:
  counts = counts.astype(np.float64)
  log_theta = np.log(counts + alpha) - np.log(counts.sum(1, keepdims=True) + alpha * counts.shape[1])
  return LangIdModel(tuple(langs), log_theta.astype(np.float32), tuple(int(o) for o in orders), int(bits))


def predict(model: LangIdModel, text: str, max_chars: int = 0) -> dict[str, float]:
  """Posterior probability of each language (uniform prior)."""
  if max_chars:
    text = text[:max_chars]
  x = ngram_buckets(text, model.orders, model.bits).astype(np.int64)
  if x.size == 0:
    return {l: 1.0 / len(model.langs) for l in model.langs}
  counts = np.bincount(x, minlength=model.log_theta.shape[1]).astype(np.float32)
  scores = (model.log_theta @ counts).astype(np.float64)
  p = np.exp(scores - scores.max())
  p /= p.sum()
  return dict(zip(model.langs, p.tolist()))


def top_language(model: LangIdModel, text: str, max_chars: int = 0) -> tuple[str, float]:
  probs = predict(model, text, max_chars)
  lang = max(probs, key=probs.get)
  return lang, probs[lang]


def save(path: str, langs, counts: np.ndarray, orders, bits: int, alpha: float = 0.5) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, langs=np.array(langs), counts=counts.astype(np.uint32),
                      orders=np.array(orders), bits=np.array(bits), alpha=np.array(alpha))
  os.replace(tmp, path)


def load(path: str) -> LangIdModel:
  with np.load(path) as d:
    return from_counts([str(l) for l in d["langs"]], d["counts"], d["orders"].tolist(),
                       int(d["bits"]), float(d["alpha"]))


# ----------------------------------------------------------------------------
# Training text found on the machine.

def _clean(s: str) -> str:
  return " ".join(_FORMAT_SPEC.sub(" ", s).split())


def locale_corpus(locale_dir: str = "/usr/share/locale", langs: Iterable[str] = (),
                  max_chars: int = 400_000, min_len: int = 12) -> dict[str, list[str]]:
  """{lang: [sentences]} from gettext catalogues: msgstr for each language,
  msgid for English. Per-language text is capped at max_chars."""
  import gettext  # pylint: disable=g-import-not-at-top
  out: dict[str, list[str]] = {}
  budget: dict[str, int] = {}
  for lang in langs:
    for path in sorted(glob.glob(os.path.join(locale_dir, lang, "LC_MESSAGES", "*.mo"))):
      try:
        with open(path, "rb") as f:
          catalog = gettext.GNUTranslations(f)._catalog  # pylint: disable=protected-access
      except Exception:  # pylint: disable=broad-except
        continue
      for key, value in sorted(catalog.items(), key=lambda kv: str(kv[0])):
        msgid = key if isinstance(key, str) else key[0]
        for l, s in ((lang.split("_")[0], value), ("en", msgid)):
          s = _clean(s) if isinstance(s, str) else ""
          if len(s) >= min_len and budget.get(l, 0) < max_chars and s not in ("",):
            out.setdefault(l, []).append(s)
            budget[l] = budget.get(l, 0) + len(s)
  return out


DEFAULT_LANGS = ("de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "fi", "pl", "cs", "sk",
                 "sl", "hr", "ro", "hu", "tr", "id", "vi", "ca", "gl", "eu", "eo", "et", "lt",
                 "lv", "ru", "uk", "bg", "sr", "el", "ja", "ko", "zh_CN")


def _main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--locale_dir", default="/usr/share/locale")
  ap.add_argument("--max_chars", type=int, default=300_000)
  ap.add_argument("--bits", type=int, default=15)
  args = ap.parse_args(argv)
  corpus = locale_corpus(args.locale_dir, DEFAULT_LANGS, args.max_chars)
  try:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
    prose = [p for t in sorted(topics.topics) for p in re.split(r"\n\s*\n", topics.topics[t])
             if len(p) > 80 and not p.lstrip().startswith((">>>", "   "))]
    corpus["en"] = corpus.get("en", []) + prose[: len(prose) // 2]
  except ImportError:
    pass
  train_set, held_out = {}, {}
  for lang, sents in corpus.items():   # every 10th sentence is held out
    train_set[lang] = [s for i, s in enumerate(sents) if i % 10]
    held_out[lang] = [" ".join(sents[i:i + 50:10]) for i in range(0, len(sents), 50)]
  model, counts = train(train_set, bits=args.bits)
  correct = total = 0
  for lang, docs in held_out.items():
    for d in docs:
      correct += top_language(model, d)[0] == lang
      total += 1
  print(f"{len(model.langs)} languages; held-out accuracy on 5-message snippets: "
        f"{correct}/{total} = {correct / max(total, 1):.4f}")
  model, counts = train(corpus, bits=args.bits)
  save(args.out, model.langs, counts, model.orders, model.bits)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
  _main()
