"""In-context-learning tasks in the llm-foundry / DCLM jsonl format, and prompts.

One JSON object per line, by task type (field names as llm-foundry's):
  language_modeling  {"context": str, "continuation": str}
  multiple_choice    {"query": str, "choices": [str, ...], "gold": int}
  schema             {"context_options": [str, ...], "continuation": str, "gold": int}

A task's settings (also the fields of a DCLM/llm-foundry `icl_tasks` entry):
label, dataset_uri (a local path), icl_task_type, num_fewshot (list of k),
continuation_delimiter (default " "), example_delimiter (default "\\n"),
prompt_string (default ""), random_baseline (default: 0 for
language_modeling, else the mean over examples of 1 / number of choices),
normalization (multiple_choice and schema: "token" = mean log-prob per
continuation token, as llm-foundry scores; "none" = summed log-prob; "char" =
summed log-prob / characters of the continuation, lm-evaluation-harness'
acc_norm), max_examples (0: all).

Prompt of example i with k shots. Shots are k distinct other examples of the
task drawn by a generator seeded with (seed, i), so example i's prompt does
not depend on which other examples are evaluated or in what order. Each
example is rendered as "context<continuation_delimiter>answer" (shots) or
"context<continuation_delimiter>" (the query; its continuation is scored);
the pieces are appended to prompt_string one by one, each preceded by
example_delimiter whenever text precedes it. By type:
  language_modeling  context = context,        answer = continuation
  multiple_choice    context = query,           answer = choices[gold];
                     one (prompt, choice) pair per choice
  schema             context = context_options[j], answer = continuation;
                     one (prompt with option j, continuation) pair per option
Whitespace at the end of a prompt moves to the start of the continuation
(" Paris", not "Paris" after "is "), so subword vocabularies see the spacing
they saw in training; the scored text is the same for every choice of an
example.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

TASK_TYPES = ("language_modeling", "multiple_choice", "schema")
NORMALIZATIONS = ("token", "none", "char")


class TaskError(ValueError):
  """A task file or task setting is invalid; the message names the file/field."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  label: str
  dataset_uri: str
  icl_task_type: str
  num_fewshot: tuple[int, ...] = (0,)
  continuation_delimiter: str = " "
  example_delimiter: str = "\n"
  prompt_string: str = ""
  random_baseline: float | None = None
  normalization: str = "token"
  max_examples: int = 0

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], base_dir: str = "") -> "TaskSpec":
    d = dict(d)
    label = str(d.get("label", ""))
    known = {f.name for f in dataclasses.fields(cls)}
    # llm-foundry entries carry fields we do not use (batch_size, has_categories, ...)
    ignored = {"batch_size", "has_categories", "metric_names", "pass_at_k",
               "early_stopping_criteria", "cot_delimiter", "do_normalization"}
    unknown = set(d) - known - ignored
    if unknown:
      raise TaskError(f"task {label!r}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    for field in ("label", "dataset_uri", "icl_task_type"):
      if not d.get(field):
        raise TaskError(f"task {label!r}: missing field {field!r}")
    if d["icl_task_type"] not in TASK_TYPES:
      raise TaskError(f"task {label!r}: icl_task_type={d['icl_task_type']!r} must be one of "
                      f"{list(TASK_TYPES)}")
    shots = d.get("num_fewshot", (0,))
    shots = (int(shots),) if isinstance(shots, (int, np.integer)) else tuple(int(k) for k in shots)
    if not shots or min(shots) < 0:
      raise TaskError(f"task {label!r}: num_fewshot={shots} must be non-negative integers")
    norm = d.get("normalization", "token")
    if norm not in NORMALIZATIONS:
      raise TaskError(f"task {label!r}: normalization={norm!r} must be one of "
                      f"{list(NORMALIZATIONS)}")
    uri = str(d["dataset_uri"])
    if base_dir and not os.path.isabs(uri):
      uri = os.path.join(base_dir, uri)
    rb = d.get("random_baseline")
    return cls(label=label, dataset_uri=uri, icl_task_type=d["icl_task_type"],
               num_fewshot=shots,
               continuation_delimiter=str(d.get("continuation_delimiter", " ")),
               example_delimiter=str(d.get("example_delimiter", "\n")),
               prompt_string=str(d.get("prompt_string", "")),
               random_baseline=None if rb is None else float(rb),
               normalization=norm, max_examples=int(d.get("max_examples", 0) or 0))


def load_task_list(path: str) -> list[TaskSpec]:
  """Task specs from a JSON file ({"icl_tasks": [...]} or [...]) or a DCLM-style
  YAML file with an `icl_tasks` list; relative dataset_uri resolve against the file's folder."""
  if not os.path.isfile(path):
    raise TaskError(f"tasks_file={path!r}: file not found")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.endswith((".yaml", ".yml")):
    import yaml  # pylint: disable=g-import-not-at-top
    data = yaml.safe_load(text)
  else:
    try:
      data = json.loads(text)
    except json.JSONDecodeError as err:
      raise TaskError(f"tasks_file={path!r}: not valid JSON ({err})") from None
  entries = data.get("icl_tasks") if isinstance(data, dict) else data
  if not isinstance(entries, list):
    raise TaskError(f"tasks_file={path!r}: expected a list of tasks (or an `icl_tasks` list)")
  base = os.path.dirname(os.path.abspath(path))
  return [TaskSpec.from_dict(e, base) for e in entries]


_REQUIRED = {
    "language_modeling": ("context", "continuation"),
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
}


def read_examples(spec: TaskSpec) -> list[dict[str, Any]]:
  """The task's examples, checked: a bad line is an error naming file and line."""
  path = spec.dataset_uri
  if not os.path.isfile(path):
    raise TaskError(f"task {spec.label!r}: dataset_uri={path!r}: file not found")
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"task {spec.label!r}: {path}:{lineno}"
      try:
        ex = json.loads(line)
      except json.JSONDecodeError as err:
        raise TaskError(f"{where}: not valid JSON ({err.msg})") from None
      if not isinstance(ex, dict):
        raise TaskError(f"{where}: expected a JSON object")
      missing = [k for k in _REQUIRED[spec.icl_task_type] if k not in ex]
      if missing:
        raise TaskError(f"{where}: missing field(s) {missing} for {spec.icl_task_type}")
      options = ex.get("choices", ex.get("context_options"))
      if options is not None:
        if not isinstance(options, list) or len(options) < 2 or not all(
            isinstance(o, str) for o in options):
          raise TaskError(f"{where}: needs a list of >= 2 strings of choices/context_options")
        gold = ex["gold"]
        if not isinstance(gold, int) or not 0 <= gold < len(options):
          raise TaskError(f"{where}: gold={gold!r} is not an index into its {len(options)} "
                          "choices")
      out.append(ex)
      if spec.max_examples and len(out) >= spec.max_examples:
        break
  if not out:
    raise TaskError(f"task {spec.label!r}: {path} holds no examples")
  return out


def _answer(spec: TaskSpec, ex: Mapping[str, Any]) -> tuple[str, str]:
  """(context, answer) of an example shown as a shot."""
  if spec.icl_task_type == "language_modeling":
    return ex["context"], ex["continuation"]
  if spec.icl_task_type == "multiple_choice":
    return ex["query"], ex["choices"][ex["gold"]]
  return ex["context_options"][ex["gold"]], ex["continuation"]


def fewshot_indices(num_examples: int, index: int, k: int, seed: int) -> np.ndarray:
  """k distinct indices != index, drawn by a generator seeded with (seed, index)."""
  if k == 0:
    return np.zeros((0,), np.int64)
  if k > num_examples - 1:
    raise TaskError(f"{k} shots need at least {k + 1} examples, the task has {num_examples}")
  rng = np.random.default_rng((int(seed), int(index)))
  pick = rng.choice(num_examples - 1, size=k, replace=False)
  return np.where(pick >= index, pick + 1, pick)


def _join(spec: TaskSpec, pieces: Sequence[str]) -> str:
  text = spec.prompt_string
  for piece in pieces:
    if text:
      text += spec.example_delimiter
    text += piece
  return text


def _move_space(context: str, continuation: str) -> tuple[str, str]:
  stripped = context.rstrip()
  return stripped, context[len(stripped):] + continuation


@dataclasses.dataclass
class Request:
  """One (context, continuation) pair to score; `example` and `choice` locate it."""
  example: int
  choice: int
  context: str
  continuation: str


def build_requests(spec: TaskSpec, examples: Sequence[Mapping[str, Any]], k: int,
                   seed: int = 1234) -> list[Request]:
  """All scoring requests of the task at k shots (module docstring)."""
  requests = []
  delim = spec.continuation_delimiter
  for i, ex in enumerate(examples):
    shots = [_answer(spec, examples[j]) for j in fewshot_indices(len(examples), i, k, seed)]
    shot_text = [c + delim + a for c, a in shots]
    if spec.icl_task_type == "language_modeling":
      queries = [(ex["context"], ex["continuation"])]
    elif spec.icl_task_type == "multiple_choice":
      queries = [(ex["query"], choice) for choice in ex["choices"]]
    else:
      queries = [(option, ex["continuation"]) for option in ex["context_options"]]
    for c, (context, continuation) in enumerate(queries):
      prompt = _join(spec, shot_text + [context + delim])
      prompt, cont = _move_space(prompt, continuation)
      requests.append(Request(i, c, prompt, cont))
  return requests


def random_baseline(spec: TaskSpec, examples: Sequence[Mapping[str, Any]]) -> float:
  if spec.random_baseline is not None:
    return spec.random_baseline
  if spec.icl_task_type == "language_modeling":
    return 0.0
  key = "choices" if spec.icl_task_type == "multiple_choice" else "context_options"
  return float(np.mean([1.0 / len(ex[key]) for ex in examples]))


def centered_accuracy(accuracy: float, baseline: float) -> float:
  """(acc - random) / (1 - random): 0 at chance, 1 when always right (DCLM's CORE)."""
  if baseline >= 1.0:
    raise ValueError(f"random baseline {baseline} must be < 1")
  return (accuracy - baseline) / (1.0 - baseline)
