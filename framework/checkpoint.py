"""Checkpoints with orbax's CheckpointManager, checked end to end.

Each checkpoint step `<directory>/<step>/` holds three orbax items:
  `state`      the sharded TrainState, saved asynchronously by every process
               for its own shards;
  `data`       the input iterator's position (JSON), so a resumed run sees
               exactly the batches an uninterrupted run would;
  `checksums`  JSON: a fingerprint of every state array and the SHA-256 of
               the data JSON, computed from the live state when it is saved;
and, once the step has been read back and its checksums matched, a file
`file_digests.json` with the SHA-256 of every other file of the step.

Fingerprint of an array x. View its elements as unsigned integers of their
width (8, 16 or 32 bits; 64-bit elements as two 32-bit words, complex ones as
their real and imaginary parts) widened to uint32, u_i, with i the row-major
index. With all arithmetic mod 2^32,
  F1(x) = sum_i u_i (2i + 1),        F2(x) = sum_i m(u_i) h(i),
m a bijective mixing of 32-bit words (murmur3's finalizer) and h(i) an odd
integer hash of i. Guarantee: a change to ONE element (any of its bytes)
always changes F1 and F2, because u_i' - u_i and m(u_i') - m(u_i) are nonzero
mod 2^32 while 2i + 1 and h(i) are odd, hence invertible mod 2^32. Sums mod 2^32 are exact and do not depend on the
order of addition, so F1 and F2 are computed under jit on the devices, on the
arrays as sharded (no host copy; any mesh, any number of hosts) and are the
same for every sharding. Changes to several elements are missed only when
both sums collide (for unstructured damage about 2^-64).

Saving (`save`): orbax writes a step into a temporary directory and renames it
once every item is complete, so a save interrupted midway is never listed.
When the next save starts (or at `close`), after its asynchronous write has
finished, the previous step is verified: read back into its shardings and its
fingerprints compared with those saved. A write that did not complete (disk
full, read-only disk, ...) raises `CheckpointSaveError` at once, naming the
path and the free space: `check()` (called after every step) notices a failed
asynchronous write as soon as its background thread ends.

Retention is ours (orbax keeps everything): after a step verifies, steps
older than the `keep` newest verified-or-older ones are deleted, so the newest
checkpoint that verified is never deleted before a newer one has verified.

Restoring (`restore_latest`): steps are tried newest first; a step whose file
digests or checksums do not match, whose files are missing or cut short,
whose JSON does not parse or that orbax fails to read is skipped with ONE log
line (step, file or item, cause), and the newest step that verifies is
restored. Newer unusable steps are moved to `<directory>/corrupt/` so that the
resumed run can write those steps again. If steps exist but none verifies,
`CheckpointCorruptError` names the directory and every cause on one line.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from framework import files

CHECKSUMS_ITEM = "checksums"
FILE_DIGESTS = "file_digests.json"
CORRUPT_DIR = "corrupt"
_JSON_FILE = "metadata"  # orbax's JsonCheckpointHandler file name inside an item
_FORMAT = 1

_quiet_depth = [0]
_last_orbax_error: list[Optional[BaseException]] = [None]


def _quiet_orbax(record: logging.LogRecord) -> bool:
  # Orbax logs every save phase at INFO through absl; keep the run log readable.
  # While we restore (and report failures ourselves, one line each) it is silent.
  if "/orbax/" not in record.pathname:
    return True
  if record.exc_info and record.levelno >= logging.ERROR:
    _last_orbax_error[0] = record.exc_info[1]
  if _quiet_depth[0]:
    return False
  return record.levelno >= logging.WARNING


logging.getLogger("absl").addFilter(_quiet_orbax)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message is one line."""


class CheckpointSaveError(CheckpointError):
  """A save failed (its message names the step directory and the free space)."""


class CheckpointCorruptError(CheckpointError):
  """A step (or every step) failed verification: `step`, `file`, `cause`."""

  def __init__(self, message: str, step: Optional[int] = None, file: str = "",
               cause: str = ""):
    super().__init__(message)
    self.step, self.file, self.cause = step, file, cause


def _one_line(text: Any, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- fingerprints

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _words(x: jax.Array) -> jax.Array:
  """x's elements as unsigned words widened to uint32 (64-bit: a trailing axis of 2)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  dtype = jnp.dtype(x.dtype)
  if dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    return jnp.stack([_words(jnp.real(x)), _words(jnp.imag(x))], axis=-1)
  if dtype.itemsize not in _UINT or (dtype.itemsize == 1 and dtype.name.endswith(("int4",
                                                                                  "int2"))):
    x = x.astype(jnp.int32)  # sub-byte integers: their value, losslessly
    dtype = jnp.dtype(jnp.int32)
  return jax.lax.bitcast_convert_type(x, _UINT[dtype.itemsize]).astype(jnp.uint32)


def _fingerprint(x: jax.Array) -> jax.Array:
  """[F1, F2] of one array (see the module docstring), uint32."""
  u = _words(x)
  index = jnp.zeros(u.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(u.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, u.shape, axis) * jnp.uint32(
        stride % 2**32)
    stride *= u.shape[axis]
  f1 = jnp.sum(u * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
  h = index * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)
  h = (h ^ (h >> 15)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) | jnp.uint32(1)
  f2 = jnp.sum(_mix(u) * h, dtype=jnp.uint32)
  return jnp.stack([f1, f2])


def _mix(u: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijection of uint32 (xor-shifts and odd multipliers)."""
  u = (u ^ (u >> 16)) * jnp.uint32(0x85EBCA6B)
  u = (u ^ (u >> 13)) * jnp.uint32(0xC2B2AE35)
  return u ^ (u >> 16)


_fingerprint_all = jax.jit(lambda leaves: [_fingerprint(x) for x in leaves])


def _to_host(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))  # replicated: every host holds it
  return np.asarray(jax.device_get(x))


def fingerprints(tree: Any) -> dict[str, str]:
  """{tree path: 16 hex digits of (F1, F2)} for every array leaf, computed on the devices."""
  paths_leaves = jax.tree_util.tree_leaves_with_path(tree)
  groups: dict[Any, list[int]] = {}  # one jit call per set of devices
  for n, (_, leaf) in enumerate(paths_leaves):
    devices = getattr(getattr(leaf, "sharding", None), "device_set", None)
    groups.setdefault(frozenset(d.id for d in devices) if devices else None, []).append(n)
  sums: list[Any] = [None] * len(paths_leaves)
  for members in groups.values():
    for n, s in zip(members, _fingerprint_all([paths_leaves[n][1] for n in members])):
      sums[n] = s
  return {jax.tree_util.keystr(path): "%08x%08x" % tuple(int(v) for v in _to_host(s))
          for (path, _), s in zip(paths_leaves, sums)}


def _json_digest(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _all_processes(ok: bool) -> bool:
  """True when `ok` on every process (so all hosts pick the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray([ok]))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


class Checkpointer:
  """Async saves every N steps, checksums, verified restore with fallback, keep-last-K."""

  def __init__(self, directory: str, *, save_every: int, keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every), 1),
        max_to_keep=None,  # retention is ours: see `_retain`
        enable_async_checkpointing=async_save,
        create=True,
    )
    self.save_every = max(int(save_every), 1)
    self.keep = int(keep) if keep else 0
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._last_saved = self.latest_step()
    self._pending: Optional[int] = None      # written, not yet verified
    self._pending_target: Any = None         # its abstract state (shapes, shardings)
    self._pending_done = False               # its write is known to have finished
    self._good: Optional[int] = None         # newest step that verified
    self._failed = False                     # a save failed (already reported)

  # ------------------------------------------------------------------ listing

  def steps(self) -> list[int]:
    """Finished steps on disk, oldest first (orbax's temporary directories excluded)."""
    try:
      names = os.listdir(self.directory)
    except FileNotFoundError:
      return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isdir(os.path.join(self.directory, n)))

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  # ------------------------------------------------------------------- saving

  def save(self, step: int, state: Any, data_state: dict | None, *, force: bool = False) -> bool:
    """Starts an asynchronous save of `step` (after verifying the previous one)."""
    self.check()
    if not force and int(step) % self.save_every:
      return False
    if self._last_saved == int(step):
      return False  # already on disk (e.g. a periodic save right before preemption)
    self._finish_pending()
    step = int(step)
    sums = {"format": _FORMAT, "arrays": fingerprints(state),
            "data": None if data_state is None else _json_digest(data_state)}
    args = {"state": ocp.args.StandardSave(state), CHECKSUMS_ITEM: ocp.args.JsonSave(sums)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    _last_orbax_error[0] = None
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if saved:
      self._last_saved = step
      self._pending, self._pending_done = step, False
      self._pending_target = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
          state)
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
      self.check()  # a synchronous save has finished already
    return saved

  def check(self) -> None:
    """Raises `CheckpointSaveError` if the last asynchronous write has ended
    without producing its step (cheap: call it after every step)."""
    if self._pending is None or self._pending_done or self.manager.is_saving_in_progress():
      return
    if os.path.isdir(self._step_dir(self._pending)):
      self._pending_done = True
      return
    step, self._pending = self._pending, None
    error = _last_orbax_error[0]
    try:
      self.manager.wait_until_finished()  # collects the background error (raised once)
    except Exception as e:  # pylint: disable=broad-except
      error = e
    raise self._save_error(step, error)

  def _save_error(self, step: int, error: Optional[BaseException]) -> CheckpointSaveError:
    cause = _one_line(error if error is not None else "the write did not complete "
                      "(see the orbax error above)", 200)
    if isinstance(error, OSError) and error.strerror:
      cause = f"[Errno {error.errno}] {error.strerror}"
    elif error is not None:
      code = _os_error_in(str(error))
      if code is not None:  # tensorstore names it deep inside a long message
        cause = f"[Errno {code}] {os.strerror(code)}: {cause}"
    message = (f"checkpoint: saving step {step} to {self._step_dir(step)} failed: {cause}; "
               f"{files.free_space(self.directory)}")
    logging.error("%s", message)
    self._failed = True
    return CheckpointSaveError(message)

  def _finish_pending(self) -> None:
    """Waits for the pending write, verifies it, records it good, applies retention."""
    if self._pending is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._pending = self._pending, None
      raise self._save_error(step, e) from e
    self.check()
    if self._pending is None:
      return
    step, target = self._pending, self._pending_target
    self._pending, self._pending_target = None, None
    try:
      self._verify(step, target, write_digests=True)
    except CheckpointCorruptError as e:
      raise CheckpointCorruptError(
          f"checkpoint: step {step} failed verification right after it was written "
          f"({e.file}: {e.cause}); the storage under {self.directory} is unreliable",
          step, e.file, e.cause) from e
    self._good = step
    self._retain()

  def _retain(self) -> None:
    if not self.keep or self._good is None:
      return
    older = [s for s in self.steps() if s <= self._good]
    for step in older[:-self.keep]:
      self.manager.delete(step)

  def close(self) -> None:
    """Finishes (and verifies) the last save."""
    try:
      self._finish_pending()
    finally:
      try:
        self.manager.close()
      except Exception as e:  # pylint: disable=broad-except
        if not self._failed:
          raise
        logging.warning("checkpoint: closing after a failed save: %s", _one_line(e))

  # ---------------------------------------------------------------- restoring

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict | None]:
    """Restores `step` straight into the given shardings (no host copy) and
    verifies it; raises `CheckpointCorruptError` (logged first) if it does not."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, shardings)
    try:
      return self._verify(int(step), target, write_digests=True)
    except CheckpointCorruptError as e:
      logging.error("%s", e)
      raise

  def restore_latest(self, abstract_state: Any, shardings: Any
                     ) -> Optional[tuple[int, Any, dict | None]]:
    """(step, state, data_state) of the newest step that verifies; None if
    there is no step; `CheckpointCorruptError` if none verifies."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, shardings)
    failed: list[CheckpointCorruptError] = []
    steps = self.steps()
    for step in reversed(steps):
      try:
        state, data_state = self._verify(step, target, write_digests=True)
      except CheckpointCorruptError as e:
        failed.append(e)
        logging.warning("checkpoint: step %d unusable: %s: %s; falling back to an older step "
                        "in %s", step, e.file, e.cause, self.directory)
        continue
      if failed:
        self._quarantine([e.step for e in failed])
        logging.warning("checkpoint: restored step %d instead of newer unusable step(s) %s "
                        "(moved to %s)", step, ", ".join(str(e.step) for e in failed),
                        os.path.join(self.directory, CORRUPT_DIR))
      self._good = self._last_saved = step
      return step, state, data_state
    if not failed:
      return None
    message = (f"checkpoint: no usable checkpoint in {self.directory}: "
               + "; ".join(f"step {e.step}: {e.file}: {e.cause}" for e in failed))
    logging.error("%s", message)
    raise CheckpointCorruptError(message)

  def _quarantine(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        dest = os.path.join(self.directory, CORRUPT_DIR, f"{step}-{stamp}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        n = 0
        while os.path.exists(dest + (f"-{n}" if n else "")):
          n += 1
        shutil.move(self._step_dir(step), dest + (f"-{n}" if n else ""))
    _sync("checkpoint_quarantine")
    self.manager.reload()

  def _verify(self, step: int, target: Any, *, write_digests: bool) -> tuple[Any, dict | None]:
    """Reads `step` back into `target`'s shardings and checks it; returns
    (state, data_state) or raises `CheckpointCorruptError(step, file, cause)`."""
    step_dir = self._step_dir(step)

    def corrupt(file: str, cause: Any) -> CheckpointCorruptError:
      cause = _one_line(cause)
      return CheckpointCorruptError(
          f"checkpoint: step {step} in {self.directory} is unusable: {file}: {cause}",
          step, file, cause)

    ok, result, error = True, None, None
    try:
      digests = self._check_file_digests(step_dir, corrupt)
      sums = self._read_json(step_dir, CHECKSUMS_ITEM, corrupt)
      if not isinstance(sums, dict) or sums.get("format") != _FORMAT or not isinstance(
          sums.get("arrays"), dict):
        raise corrupt(f"{CHECKSUMS_ITEM}/{_JSON_FILE}", "not a checksums record")
      data_state = None
      if sums.get("data") is not None:
        data_state = self._read_json(step_dir, "data", corrupt)
        if _json_digest(data_state) != sums["data"]:
          raise corrupt(f"data/{_JSON_FILE}", "SHA-256 of the data position does not match "
                        "the checksums")
      _quiet_depth[0] += 1
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
      except Exception as e:  # pylint: disable=broad-except
        raise corrupt(_file_named_in(str(e), step_dir) or "state", f"orbax could not read "
                      f"it: {type(e).__name__}: {e}") from e
      finally:
        _quiet_depth[0] -= 1
      read = fingerprints(restored)
      saved = sums["arrays"]
      for path in sorted(set(read) | set(saved)):
        if read.get(path) != saved.get(path):
          raise corrupt(f"state{path}", f"checksum mismatch (saved {saved.get(path)}, "
                        f"read {read.get(path)})")
      result = (restored, data_state)
      if write_digests and digests is None:
        self._write_file_digests(step_dir)
    except CheckpointCorruptError as e:
      ok, error = False, e
    if not _all_processes(ok):
      raise error if error is not None else corrupt("state", "failed on another process")
    return result

  def _read_json(self, step_dir: str, item: str, corrupt) -> Any:
    path = os.path.join(step_dir, item, _JSON_FILE)
    try:
      with open(path, encoding="utf-8") as f:
        return json.load(f)
    except FileNotFoundError:
      raise corrupt(f"{item}/{_JSON_FILE}", "missing") from None
    except (OSError, ValueError) as e:
      raise corrupt(f"{item}/{_JSON_FILE}", f"unreadable: {e}") from e

  def _check_file_digests(self, step_dir: str, corrupt) -> Optional[dict]:
    """Checks the step's files against `file_digests.json` (None if the step
    has none yet: it was never verified)."""
    path = os.path.join(step_dir, FILE_DIGESTS)
    if not os.path.exists(path):
      return None
    try:
      with open(path, encoding="utf-8") as f:
        digests = json.load(f)
      if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise ValueError("not a {file: sha256} record")
    except (OSError, ValueError) as e:
      raise corrupt(FILE_DIGESTS, f"unreadable: {e}") from e
    for rel, digest in sorted(digests.items()):
      full = os.path.join(step_dir, rel)
      try:
        actual = _file_digest(full)
      except FileNotFoundError:
        raise corrupt(rel, "missing") from None
      except OSError as e:
        raise corrupt(rel, f"unreadable: {e}") from e
      if actual != digest:
        raise corrupt(rel, "SHA-256 differs from the one recorded when the step was verified")
    return digests

  def _write_file_digests(self, step_dir: str) -> None:
    if jax.process_index() != 0:
      return
    digests = {}
    for root, _, names in os.walk(step_dir):
      for name in names:
        full = os.path.join(root, name)
        rel = os.path.relpath(full, step_dir)
        if rel != FILE_DIGESTS and not name.startswith("."):
          digests[rel] = _file_digest(full)
    try:
      files.write_text(os.path.join(step_dir, FILE_DIGESTS),
                       json.dumps(digests, indent=1, sort_keys=True))
    except OSError as e:  # e.g. restoring from read-only storage: the checksums still held
      logging.warning("checkpoint: could not record file digests: %s", e)


def _os_error_in(message: str) -> Optional[int]:
  """The errno an orbax/tensorstore error message reports, if any."""
  match = re.search(r"os_error_code='?(\d+)", message) or re.search(r"\[Errno (\d+)\]", message)
  if match:
    return int(match.group(1))
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
    if os.strerror(code) in message:
      return code
  return None


def _file_named_in(message: str, step_dir: str) -> Optional[str]:
  """The step's file an orbax/tensorstore error message names, if any."""
  match = re.search(re.escape(step_dir.rstrip("/")) + r"/([^\s\"',:\]}]+)", message)
  return match.group(1) if match else None
