"""Checkpoints with orbax's CheckpointManager.

Each checkpoint step holds two items: `state` (the sharded TrainState, saved
asynchronously by every process for its own shards) and `data` (the input
iterator's position as JSON), so a resumed run sees exactly the batches an
uninterrupted run would. Orbax writes a step into a temporary directory and
renames it only once every item is complete, so a save interrupted midway is
never listed, hence never loaded: resuming takes the newest finished step.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp



def _quiet_orbax(record: logging.LogRecord) -> bool:
  # Orbax logs every save phase at INFO through absl; keep the run log readable.
  return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


logging.getLogger("absl").addFilter(_quiet_orbax)


class Checkpointer:
  """Thin wrapper: async saves every N steps, keep-last-K, resume."""

  def __init__(self, directory: str, *, save_every: int, keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every), 1),
        max_to_keep=int(keep) if keep else None,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self.save_every = max(int(save_every), 1)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._last_saved = self.manager.latest_step()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None, *, force: bool = False) -> bool:
    if not force and int(step) % self.save_every:
      return False
    if self._last_saved == int(step):
      return False  # already on disk (e.g. a periodic save right before preemption)
    args = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    saved = self.manager.save(int(step), args=ocp.args.Composite(**args), force=force)
    if saved:
      self._last_saved = int(step)
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, dict | None]:
    """Restores `step` straight into the given shardings (no host copy)."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, shardings)
    has_data = os.path.isdir(os.path.join(self.directory, str(int(step)), "data"))
    args = {"state": ocp.args.StandardRestore(target)}
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], (restored["data"] if has_data else None)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
