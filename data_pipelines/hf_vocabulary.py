"""Hugging Face `tokenizer.json` vocabularies for seqio, and a byte-level BPE
trainer that writes them.

Byte-level BPE (Sennrich et al., 2016; the GPT-2 variant): text is taken as its
UTF-8 bytes b_1..b_n, each byte mapped to one of 256 base symbols, and a
learned, ordered list of merges (x, y) -> xy is applied greedily (earliest
merge first) inside each pre-tokenized word. Training starts from the 256 byte
symbols plus the special tokens and repeatedly adds the most frequent adjacent
pair (count >= min_frequency) until the vocabulary holds V symbols. Every byte
is a symbol, so there is no unknown input and decode(encode(t)) == t for any
UTF-8 text t (no normalizer, no prefix space).

seqio reserves id 0 for padding (the feature converters pad with 0 and weight
only targets != 0), so a tokenizer's id 0 must be its pad token; the trainer
puts `<pad>`, `</s>`, `<unk>` at ids 0, 1, 2, as in seqio's ByteVocabulary.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

PAD_TOKENS = ("<pad>", "<|pad|>", "[PAD]")
EOS_TOKENS = ("</s>", "<|endoftext|>", "<eos>", "<|eos|>")
UNK_TOKENS = ("<unk>", "<|unk|>", "[UNK]")
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")   # what `train_byte_level_bpe` reserves, ids 0, 1, 2

Names = Union[str, Sequence[str]]


def _as_names(names: Names) -> tuple[str, ...]:
  return (names,) if isinstance(names, str) else tuple(names)


class HfTokenizerVocabulary(seqio.Vocabulary):
  """A seqio Vocabulary over a Hugging Face `tokenizer.json`.

  Ids are the tokenizer's own; `encode` adds no special tokens (seqio appends
  EOS itself) and treats special-token strings in the text as ordinary text,
  so a document that contains "</s>" does not end early. `decode` drops
  special tokens. pad/eos/unk are the first of the given names the tokenizer
  knows; pad must be id 0 and eos must exist.
  """

  def __init__(self, path: str, *, pad_token: Names = PAD_TOKENS,
               eos_token: Names = EOS_TOKENS, unk_token: Names = UNK_TOKENS):
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"config.data.vocab_path={path!r}: tokenizer.json not found")
    # One read: the loaded tokenizer and `digest` come from the same bytes,
    # even if the file is replaced meanwhile.
    with open(path, "rb") as f:
      data = f.read()
    try:
      tokenizer = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as err:  # the Rust side raises a bare Exception
      raise ValueError(f"config.data.vocab_path={path!r}: not a Hugging Face tokenizer.json "
                       f"({err})") from None
    tokenizer.encode_special_tokens = True
    self._path = path
    self._tokenizer = tokenizer
    self._digest = hashlib.sha256(data).hexdigest()
    self._size = tokenizer.get_vocab_size(with_added_tokens=True)
    self._pad = self._find(pad_token)
    self._eos = self._find(eos_token)
    self._unk = self._find(unk_token)
    if self._eos is None:
      raise ValueError(f"config.data.vocab_path={path!r}: no end-of-sequence token among "
                       f"{_as_names(eos_token)}; seqio ends every document with one")
    if self._pad is not None and self._pad != 0:
      raise ValueError(f"config.data.vocab_path={path!r}: pad token has id {self._pad}, but "
                       "seqio pads with id 0 and masks id 0 out of the loss")
    if self._pad is None:
      token0 = tokenizer.id_to_token(0)
      raise ValueError(f"config.data.vocab_path={path!r}: no pad token among "
                       f"{_as_names(pad_token)}; seqio pads with id 0 and masks it out of the "
                       f"loss, here id 0 is {token0!r} (retrain with a pad token first)")
    super().__init__(extra_ids=0)

  def _find(self, names: Names) -> Optional[int]:
    for name in _as_names(names):
      i = self._tokenizer.token_to_id(name)
      if i is not None:
        return int(i)
    return None

  @property
  def path(self) -> str:
    return self._path

  @property
  def digest(self) -> str:
    """sha256 of the tokenizer.json bytes."""
    return self._digest

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  @property
  def bos_id(self) -> Optional[int]:
    return None

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def eos_id(self) -> Optional[int]:
    return self._eos

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  def _encode(self, s: Union[str, bytes]) -> Sequence[int]:
    s = s.decode("utf-8") if isinstance(s, bytes) else s
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self._size]
    return self._tokenizer.decode(ids, skip_special_tokens=True)

  def _encode_rows(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    encodings = self._tokenizer.encode_batch(
        [s.decode("utf-8") for s in strings.reshape(-1).tolist()], add_special_tokens=False)
    lengths = np.array([len(e.ids) for e in encodings], np.int64)
    flat = np.fromiter((i for e in encodings for i in e.ids), np.int32, int(lengths.sum()))
    return flat, lengths

  def _encode_tf(self, s: tf.Tensor) -> Union[tf.Tensor, tf.RaggedTensor]:
    """A scalar string -> int32 [n]; a vector of strings -> ragged int32 [b, None]."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank not in (0, 1):
      raise ValueError(f"HfTokenizerVocabulary.encode_tf takes a scalar or vector of strings, "
                       f"got shape {s.shape}")
    flat, lengths = tf.numpy_function(self._encode_rows, [tf.reshape(s, [-1])],
                                      [tf.int32, tf.int64], stateful=False)
    flat.set_shape([None])
    lengths.set_shape([None])
    if s.shape.rank == 0:
      return flat
    return tf.RaggedTensor.from_row_lengths(flat, lengths)

  def _decode_rows(self, ids: np.ndarray) -> np.ndarray:
    rows = ids.reshape(int(np.prod(ids.shape[:-1])), ids.shape[-1])
    out = [self._decode(row.tolist()).encode("utf-8") for row in rows]
    return np.array(out, dtype=object).reshape(ids.shape[:-1])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., n] -> strings [...] (special tokens dropped)."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank is None or ids.shape.rank < 1:
      raise ValueError(f"HfTokenizerVocabulary.decode_tf takes ids of rank >= 1, got {ids.shape}")
    out = tf.numpy_function(self._decode_rows, [tf.cast(ids, tf.int64)], tf.string,
                            stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other) -> bool:
    return isinstance(other, HfTokenizerVocabulary) and self._digest == other._digest

  def __hash__(self) -> int:
    return hash(self._digest)

  def __str__(self) -> str:
    return (f"HfTokenizerVocabulary(file={self._path}, size={self._size}, "
            f"sha256={self._digest[:16]})")


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, out_path: str,
                         min_frequency: int = 2,
                         special_tokens: Sequence[str] = SPECIAL_TOKENS) -> str:
  """Trains a byte-level BPE tokenizer on `texts` and writes its tokenizer.json
  to `out_path` atomically (temp file + rename). Special tokens get ids 0, 1, ...
  in the given order, then the 256 byte symbols, then the merges. Returns
  `out_path`. The same texts and settings give a byte-identical file.

  `vocab_size` counts special tokens and the 256 bytes; a corpus with fewer
  pairs than that leaves the vocabulary smaller.
  """
  special_tokens = list(special_tokens)
  alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(alphabet) + len(special_tokens):
    raise ValueError(f"vocab_size={vocab_size} must be >= {len(alphabet) + len(special_tokens)} "
                     f"(256 bytes + {len(special_tokens)} special tokens)")
  if len(set(special_tokens)) != len(special_tokens):
    raise ValueError(f"special_tokens={special_tokens} has duplicates")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=int(vocab_size), min_frequency=int(min_frequency), show_progress=False,
      special_tokens=special_tokens, initial_alphabet=alphabet)
  tok.train_from_iterator(texts, trainer=trainer)
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  data = tok.to_str(pretty=True).encode("utf-8")
  fd, tmp = tempfile.mkstemp(prefix=".tokenizer.", suffix=".json.tmp", dir=out_dir)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, out_path)   # never a half-written tokenizer.json under the real name
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return out_path
