"""Run-directory files written whole or not at all, with disk-space errors that say why.

`atomic_open(path)` writes to a temporary file next to `path`, flushes and
fsyncs it, and renames it over `path` (POSIX `rename` is atomic), so readers
and a killed or disk-full run see either the old file or the complete new one,
never a 0-byte or half-written one. Any `OSError` (ENOSPC, EROFS, EDQUOT, ...)
removes the temporary file and is raised again, same errno, naming the path and
the free space on its filesystem (`shutil.disk_usage`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import IO, Iterator


def _human(num_bytes: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(num_bytes) < 1024 or unit == "TiB":
      return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1024
  return f"{num_bytes:.1f} TiB"


def free_space(path: str) -> str:
  """'<free> free of <total>' on the filesystem holding `path` (its nearest existing parent)."""
  probe = os.path.abspath(path)
  while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  try:
    usage = shutil.disk_usage(probe)
  except OSError as e:
    return f"free space unknown ({e.strerror or e})"
  return f"{_human(usage.free)} free of {_human(usage.total)} on the filesystem of {probe}"


class WriteError(OSError):
  """An OSError whose message names the file and the free space on its filesystem."""


def write_error(path: str, error: BaseException, what: str = "write") -> WriteError:
  errno = getattr(error, "errno", None)
  cause = getattr(error, "strerror", None) or str(error) or type(error).__name__
  return WriteError(errno, f"cannot {what} {path}: {cause}; {free_space(path)}")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
  """`with atomic_open(path) as f: f.write(...)`: `path` appears complete or not at all."""
  path = os.path.abspath(path)
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
  if "b" in mode:
    encoding = None
  try:
    with open(tmp, mode, encoding=encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    _remove_quietly(tmp)
    raise write_error(path, e) from e
  except BaseException:
    _remove_quietly(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (see `atomic_open`)."""
  with atomic_open(path) as f:
    f.write(text)


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass
