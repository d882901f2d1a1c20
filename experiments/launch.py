"""Launch any experiment from a config file.

  python -m experiments.launch --config=experiments/configs/lm_quickstart.py \
      --workdir=runs/quickstart --config.trainer.total_steps=300

The config's `runner` names a module with `run(config, workdir) -> dict` and
`default_config()`, the schema of its configs: keys the schema does not have
(in the file or as overrides) fail at start, naming the key. Variants are
arguments of one config file: `--config=experiments/parity/...py:small`.
Re-running with the same --workdir resumes from its newest checkpoint.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (metrics, checkpoints, plots, report). "
    "Default: runs/<config file name>.")


def one_line(err: BaseException) -> str:
  """`err` as one line: flag parsing wraps config errors in others, so take the
  message in the chain that carries a did-you-mean hint, else the root cause."""
  chain = []
  while err is not None and len(chain) < 10:
    chain.append(err)
    err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
  pick = next((e for e in chain if "did you mean" in str(e).lower()), chain[-1])
  text = str(pick).replace("\\n", " ").replace("\\'", "'").strip().strip("'\"")
  return " ".join(text.split())


def _parse_flags(argv):
  """absl's flag parsing, but a bad flag or config file is one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as err:
    print(f"launch: {one_line(err)}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from framework import mesh  # pylint: disable=g-import-not-at-top
  mesh.maybe_initialize_distributed()
  try:
    config = _CONFIG.value
    has_runner = "runner" in config  # a config file that failed to load raises here
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as err:
    print(f"launch: --config: {one_line(err)}", file=sys.stderr)
    sys.exit(2)
  if not has_runner:
    raise app.UsageError("the config has no `runner` field naming the module to run")
  workdir = _WORKDIR.value or os.path.join(
      "runs", os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0])
  runner = importlib.import_module(config.runner)
  if not hasattr(runner, "default_config"):
    raise app.UsageError(f"runner {config.runner} has no default_config() (its config schema)")
  from framework import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config_lib.check_keys(config, runner.default_config())
    summary = runner.run(config, workdir)
  except (config_lib.ConfigError, mesh.MeshError) as err:
    print(f"launch: {one_line(err)}", file=sys.stderr)
    sys.exit(2)
  logging.info("run directory: %s", os.path.abspath(workdir))
  if jax.process_index() == 0:  # one summary per job, not one per process
    print(json.dumps(summary, default=str, indent=2))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse_flags)
