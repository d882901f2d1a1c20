"""The language-model input path through seqio.

  JSONL/text files -> seqio Task (tokenize, split long documents into chunks,
  append EOS) -> packing to fixed length with segment ids and positions (what
  seqio's DecoderFeatureConverter does, plus a loss mask) -> numpy arrays cached
  once per (task, split, length, vocabulary, input bytes) -> `BatchIterator`
  (deterministic shuffling by seed and shard, resumable).

Packed arrays use the framework's batch keys: inputs, targets, weights,
segment_ids, positions. Which files a run reads (`config.data.source`) is
decided one level up, in `lm_sources`.

Completion-only loss: a JSONL record {"prompt": p, "completion": c} is the
document p + c (tokenized as tok(p) ++ tok(c)) whose loss weights are 0 on
tok(p) and 1 on tok(c) and its EOS, as in supervised fine-tuning; a record
{"text": t} has weight 1 everywhere. One file may mix both.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from data_pipelines import corpus

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


def _tf():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators JAX owns
  return tf


def make_vocabulary(kind: str = "byte", path: str = ""):
  """`byte` (UTF-8 bytes + pad/eos/unk, 259 ids), `sentencepiece` (model file)
  or `hf_tokenizer` (a Hugging Face tokenizer.json, see `hf_vocabulary`)."""
  import seqio  # pylint: disable=g-import-not-at-top
  if kind == "byte":
    return seqio.ByteVocabulary()
  if kind == "sentencepiece":
    if not path or not os.path.exists(path):
      raise FileNotFoundError(f"config.data.vocab_path={path!r}: SentencePiece model not found")
    return seqio.SentencePieceVocabulary(path)
  if kind == "hf_tokenizer":
    from data_pipelines import hf_vocabulary  # pylint: disable=g-import-not-at-top
    return hf_vocabulary.HfTokenizerVocabulary(path)
  raise ValueError(f"config.data.vocab={kind!r} must be 'byte', 'sentencepiece' or 'hf_tokenizer'")


def mask_prompt(dataset, output_features):
  """After tokenization: a document with a `prompt` string becomes targets =
  tok(prompt) ++ tok(targets) with loss_mask 0 on the prompt's tokens and 1 on
  the rest; a document without one gets loss_mask 1 everywhere."""
  tf = _tf()
  vocabulary = output_features["targets"].vocabulary

  def fn(ex):
    targets = ex["targets"]
    if "prompt" not in ex:
      return {"targets": targets, "loss_mask": tf.ones_like(targets)}
    prompt = tf.cast(vocabulary.encode_tf(ex["prompt"]), targets.dtype)
    return {"targets": tf.concat([prompt, targets], 0),
            "loss_mask": tf.concat([tf.zeros_like(prompt), tf.ones_like(targets)], 0)}

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def chunk_targets(dataset, sequence_length: Mapping[str, int]):
  """Splits each document's tokens (and its loss mask) into chunks of length
  L - 1 (room for EOS) instead of truncating, so no text is thrown away."""
  tf = _tf()
  size = int(sequence_length["targets"]) - 1

  def split(ex):
    mask = ex.get("loss_mask", tf.ones_like(ex["targets"]))
    return tf.data.Dataset.from_tensor_slices(
        {"targets": ex["targets"], "loss_mask": mask}).batch(size)

  return dataset.flat_map(split)


def vocabulary_identity(vocabulary) -> str:
  """What fixes the token ids a vocabulary produces: its kind, its extra ids
  and, for SentencePiece and tokenizer.json, a hash of the file's bytes (so a
  retrained model under the same path is a different vocabulary). "" when unknown."""
  import seqio  # pylint: disable=g-import-not-at-top
  from data_pipelines import hf_vocabulary  # pylint: disable=g-import-not-at-top
  extra = int(getattr(vocabulary, "extra_ids", 0) or 0)
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return f"byte+{extra}"
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return f"sentencepiece+{extra}:{hashlib.sha256(vocabulary.sp_model).hexdigest()[:16]}"
  if isinstance(vocabulary, hf_vocabulary.HfTokenizerVocabulary):
    return f"hf_tokenizer+{extra}:{vocabulary.digest[:16]}"
  return ""


def content_digest(paths: Iterable[str], chunk_bytes: int = 1 << 20) -> str:
  """sha256 over the bytes of the files, in the given order, read in chunks.
  Size and mtime are not enough: an in-place edit may keep both."""
  h = hashlib.sha256()
  for path in paths:
    h.update(len(path).to_bytes(4, "little"))   # file boundaries count
    with open(path, "rb") as f:
      while chunk := f.read(chunk_bytes):
        h.update(chunk)
    h.update(b"\0")
  return h.hexdigest()[:16]


class TaskInputs(NamedTuple):
  """Everything that decides what a registered task yields."""
  files: tuple[str, ...]   # absolute paths, sorted
  vocabulary: str          # vocabulary_identity(); "" if unknown
  params: str = ""         # anything else, e.g. how documents go to splits


# {task name: TaskInputs} of the tasks registered by `register_text_task`.
# Packing caches are keyed on it.
_TASK_INPUTS: dict[str, TaskInputs] = {}


def register_text_task(name: str, dataset_fn, splits: Sequence[str], vocabulary,
                       files: Iterable[str], params: str = "") -> str:
  """Registers a seqio Task over text documents: `dataset_fn(split, shuffle_files,
  seed)` yields {"targets": text} or {"prompt": text, "targets": text} (loss
  on the targets only, see `mask_prompt`); the task tokenizes with
  `vocabulary`, splits long documents into chunks and appends EOS. `files`
  are everything it reads, `params` whatever else decides its output.

  A name registered before with the same inputs is reused; with other ones it
  is registered anew, so a task name never serves stale data.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  inputs = TaskInputs(tuple(sorted(os.path.abspath(f) for f in files)),
                      vocabulary_identity(vocabulary), params)
  if name in seqio.TaskRegistry.names():
    if _TASK_INPUTS.get(name) == inputs and inputs.vocabulary:
      return name
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
      preprocessors=[seqio.preprocessors.tokenize, mask_prompt, chunk_targets,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=True)},
  )
  _TASK_INPUTS[name] = inputs
  return name


def _jsonl_dataset_fn(paths: Mapping[str, str]):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
    del shuffle_files, seed  # shuffling happens at batching, by seed and shard
    tf = _tf()
    path = paths[split]
    if path.endswith(".jsonl"):
      docs = corpus.read_jsonl_documents(path)
      if not any(p for p, _ in docs):
        return tf.data.Dataset.from_tensor_slices(
            {"targets": tf.constant([c for _, c in docs], tf.string)})
      return tf.data.Dataset.from_tensor_slices({
          "prompt": tf.constant([p for p, _ in docs], tf.string),
          "targets": tf.constant([c for _, c in docs], tf.string)})
    return tf.data.TextLineDataset(path).map(lambda t: {"targets": t})
  return dataset_fn


def register_lm_task(name: str, paths: Mapping[str, str], vocabulary) -> str:
  """Registers a seqio Task reading JSONL (`text`, or `prompt` and
  `completion` fields) or text lines, one file per split (see
  `register_text_task` for re-registration)."""
  for split, path in paths.items():
    if not os.path.exists(path):
      raise FileNotFoundError(f"data file for split {split!r} not found: {path}")
  return register_text_task(name, _jsonl_dataset_fn(dict(paths)), list(paths), vocabulary,
                            paths.values())


def cache_key(task_name: str, split: str, seq_len: int) -> str:
  """Key of a task's packed arrays: task, split and length, the vocabulary's
  identity, the task's other inputs and a digest of the bytes of every input
  file. "" (do not cache) for a task whose inputs are unknown (not registered
  by `register_text_task`)."""
  import seqio  # pylint: disable=g-import-not-at-top
  inputs = _TASK_INPUTS.get(task_name)
  vocab = vocabulary_identity(seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary)
  if inputs is None or not vocab or vocab != inputs.vocabulary:
    return ""
  fields = (task_name, split, str(seq_len), vocab, inputs.params, content_digest(inputs.files))
  return hashlib.sha1("|".join(fields).encode()).hexdigest()[:12]


def pack_with_loss_mask(ds, seq_len: int):
  """Packs tokenized documents ({"targets", optional "loss_mask"}) into rows
  of `seq_len`: the batch keys, with weights = non-padding * loss_mask.

  The same rows as seqio.DecoderFeatureConverter(pack=True) (which cannot
  carry a mask through packing): targets and mask have equal lengths, so
  seqio's packer places them alike; inputs are the targets shifted right
  within each segment, with 0 (BOS) first.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  tf = _tf()

  def with_mask(ex):
    targets = ex["targets"]
    mask = ex.get("loss_mask", tf.ones_like(targets))
    # append_eos_after_trim added EOS to targets only: the EOS is trained on.
    mask = tf.concat([mask, tf.ones([tf.size(targets) - tf.size(mask)], mask.dtype)], 0)
    # The packer finds each feature's length by its non-zero entries: store
    # the mask as 1 (no loss) / 2 (loss) so that it packs like the targets.
    return {"targets": targets, "loss_mask": tf.cast(mask, tf.int32) + 1}

  ds = ds.map(with_mask, num_parallel_calls=tf.data.AUTOTUNE)
  ds = seqio.utils.trim_and_pack_dataset(ds, {"targets": seq_len, "loss_mask": seq_len})

  def to_batch(ex):
    targets, segments = ex["targets"], ex["targets_segment_ids"]
    inputs = seqio.utils.make_autoregressive_inputs(targets, sequence_id=segments, bos_id=0)
    weights = tf.cast(tf.not_equal(targets, 0) & tf.equal(ex["loss_mask"], 2), tf.int32)
    return {"inputs": inputs, "targets": targets, "weights": weights,
            "segment_ids": segments, "positions": ex["targets_positions"]}

  return ds.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)


def packed_arrays(task_name: str, split: str, seq_len: int, cache_dir: str = "") -> dict[str, np.ndarray]:
  """Runs the seqio task with packing and returns int32 arrays [N, seq_len].

  Cached as .npz in `cache_dir` when given, under `cache_key` (vocabulary and
  input bytes included, so a changed vocabulary or an edited file is packed
  anew). A split without documents gives arrays of shape [0, seq_len].
  """
  import seqio  # pylint: disable=g-import-not-at-top
  key = cache_key(task_name, split, seq_len) if cache_dir else ""
  path = os.path.join(cache_dir, f"{task_name}.{split}.{seq_len}.{key}.npz") if key else ""
  if path and os.path.exists(path):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  _tf()
  task = seqio.get_mixture_or_task(task_name)
  lengths = {"targets": seq_len}
  ds = task.get_dataset(lengths, split=split, shuffle=False, use_cached=False, seed=0)
  ds = pack_with_loss_mask(ds, seq_len)
  rows: dict[str, list[np.ndarray]] = {k: [] for k in BATCH_KEYS}
  for ex in ds.as_numpy_iterator():
    for key_ in rows:
      rows[key_].append(ex[key_])
  arrays = {k: (np.stack(v) if v else np.zeros((0, seq_len))).astype(np.int32)
            for k, v in rows.items()}
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"  # per process: N hosts may pack at once
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  logging.info("packed %s/%s: %d sequences of %d tokens", task_name, split,
               len(arrays["inputs"]), seq_len)
  return arrays
