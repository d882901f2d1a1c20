"""Device mesh with named axes (data, fsdp, tensor) built from the config.

`mesh.shape = {"data": -1, "fsdp": 1, "tensor": 1}`: at most one -1, which
takes whatever devices remain. The product must equal the device count.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


class MeshError(ValueError):
  """The requested mesh does not fit the devices."""


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills a single -1 and checks that the axes multiply to `num_devices`."""
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise MeshError(f"config.mesh.shape has unknown axes {sorted(unknown)}; "
                    f"allowed axes are {list(MESH_AXES)}")
  sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise MeshError(f"config.mesh.shape may have at most one -1, got {sizes}")
  bad = [a for a, s in sizes.items() if s == 0 or s < -1]
  if bad:
    raise MeshError(f"config.mesh.shape axes {bad} must be positive or -1, got {sizes}")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if fill:
    if num_devices % known:
      raise MeshError(
          f"config.mesh.shape={sizes}: the fixed axes multiply to {known}, which does "
          f"not divide the {num_devices} available devices")
    sizes[fill[0]] = num_devices // known
  total = int(np.prod(list(sizes.values())))
  if total != num_devices:
    raise MeshError(
        f"config.mesh.shape={sizes} needs {total} devices but {num_devices} are "
        f"available; use -1 on one axis to fill the rest")
  return sizes


def create_mesh(shape: Mapping[str, int],
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Creates a Mesh over `devices` (default: all) with axes (data, fsdp, tensor).

  Uses `mesh_utils.create_device_mesh` so the physical topology (ICI rings on
  TPU, NVLink islands on GPU) is respected where JAX knows it.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(shape, len(devices))
  dims = tuple(sizes[a] for a in MESH_AXES)
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(dims, devices=devices)
  except Exception:  # pylint: disable=broad-except
    # Fake CPU devices and sub-lists of devices have no topology to respect.
    grid = np.asarray(devices, dtype=object).reshape(dims)
  return Mesh(grid, MESH_AXES)


_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS",
                     "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS",
                     "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when a multi-process job is detected.

  Detection: any of the usual cluster variables (JAX coordinator, SLURM with
  more than one task, Open MPI, multi-worker TPU VMs). With
  JAX_NUM_PROCESSES and JAX_PROCESS_ID also set (N processes on one or more
  machines, as `tools/local_cluster.py` starts them) those are passed on, with
  JAX_HEARTBEAT_TIMEOUT_SECONDS / JAX_INITIALIZATION_TIMEOUT_SECONDS if given.
  Returns True if it initialised. Must run before any other JAX call touches
  the backend.
  """
  env = os.environ
  multi = False
  for key in _MULTIPROCESS_ENV:
    value = env.get(key)
    if not value:
      continue
    if key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
      multi = multi or int(value) > 1
    elif key == "TPU_WORKER_HOSTNAMES":
      multi = multi or len(value.split(",")) > 1
    else:
      multi = True
  if not multi:
    return False
  # Explicit processes (`tools/local_cluster.py`, or set by hand): JAX reads
  # only the coordinator address from the environment, so pass the rest.
  kwargs = {}
  if env.get("JAX_NUM_PROCESSES") and env.get("JAX_PROCESS_ID"):
    kwargs = dict(coordinator_address=env.get("JAX_COORDINATOR_ADDRESS"),
                  num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env["JAX_PROCESS_ID"]))
    # A process that died is noticed by the others after this many seconds.
    if env.get("JAX_HEARTBEAT_TIMEOUT_SECONDS"):
      kwargs["heartbeat_timeout_seconds"] = int(env["JAX_HEARTBEAT_TIMEOUT_SECONDS"])
    if env.get("JAX_INITIALIZATION_TIMEOUT_SECONDS"):
      kwargs["initialization_timeout"] = int(env["JAX_INITIALIZATION_TIMEOUT_SECONDS"])
  jax.distributed.initialize(**kwargs)
  return True
