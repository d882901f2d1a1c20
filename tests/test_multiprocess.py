"""Multi-process CPU jobs (`tools/local_cluster.py`): N processes are one job.

- The data path: with P processes, process p's rows of global batch b are
  rows [p B/P, (p+1) B/P) of the one-process batch, and the global array built
  from the host-local rows (`framework.sharding.global_batch`) equals it (no
  example missing or repeated), also past an epoch boundary.
- `python -m experiments.launch` as 2 processes x 4 fake devices trains
  as 1 process x 8 devices (same mesh): the same loss at each of 10 steps
  and the same final parameters and optimizer state (read from the
  checkpoints with orbax; float32 rounding apart), with every
  process writing its shards of the checkpoint and only process 0 printing
  progress and the summary.
- (slow) Both processes killed mid-run resume to the same end state, on 2
  processes and on 1 process x 8 devices from the 2-process checkpoint.
- A process that dies makes the job end in bounded time, naming it.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time

from absl.testing import absltest
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tools import local_cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command, n, devices, *, timeout_s=600.0, grace_s=10.0, heartbeat_s=10,
         until=None):
  """Runs `command` as n processes; returns (status, output lines, seconds).

  until: a function polled while the job runs; when it returns True every
  process is killed (SIGKILL), as a crash of the whole job would.
  """
  lines = []
  start = time.monotonic()
  cluster = local_cluster.Cluster(n, command, devices_per_process=devices,
                                  heartbeat_s=heartbeat_s, grace_s=grace_s,
                                  timeout_s=timeout_s, cwd=REPO,
                                  print_fn=lambda s, **_: lines.append(s))
  if until is not None:
    while any(p.poll() is None for p in cluster.procs):
      if until():
        cluster.signal_all(signal.SIGKILL)
        break
      time.sleep(0.05)
  status = cluster.wait()
  return status, lines, time.monotonic() - start


# --------------------------------------------------------------------- data path

_DATA_SCRIPT = textwrap.dedent("""
    from framework import mesh as mesh_lib
    assert mesh_lib.maybe_initialize_distributed()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from data_pipelines import batching
    from experiments import lm
    from framework import sharding

    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    n, gbs = 40, 16                      # 2 batches per epoch, tail of 8 dropped
    arrays = {"x": np.arange(n * 3, dtype=np.int32).reshape(n, 3)}
    mine = batching.BatchIterator(arrays, gbs, seed=3, shard_index=jax.process_index(),
                                  num_shards=jax.process_count())
    single = batching.BatchIterator(arrays, gbs, seed=3)
    mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    for step in range(5):                # crosses two epoch boundaries
      local, want = next(mine), next(single)["x"]
      assert local["x"].shape == (gbs // 2, 3)
      glob = sharding.global_batch(local, mesh)["x"]
      full = np.asarray(multihost_utils.process_allgather(glob, tiled=True))
      assert np.array_equal(full, want), (step, full[:, 0], want[:, 0])
      ids = np.asarray(multihost_utils.process_allgather(local["x"][:, 0] // 3))
      assert sorted(ids.ravel()) == sorted(want[:, 0] // 3), step
      assert len(set(ids.ravel())) == gbs, step
    evals = list(lm.eval_batches_fn(arrays, gbs, 2)())
    for b, batch in enumerate(evals):
      rows = np.asarray(multihost_utils.process_allgather(batch["x"], tiled=True))
      assert np.array_equal(rows, arrays["x"][b * gbs:(b + 1) * gbs]), b
    assert len(evals) == 2
    print("DATA_OK", jax.process_index(), flush=True)
""")


class LocalClusterTest(absltest.TestCase):

  def test_environment_of_each_process(self):
    base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/x",
            "JAX_PROCESS_ID": "7"}
    env = local_cluster.process_env(1, 2, 1234, 4, 5, base=base)
    self.assertEqual(env["JAX_COORDINATOR_ADDRESS"], "127.0.0.1:1234")
    self.assertEqual((env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]), ("2", "1"))
    self.assertEqual(env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"], "gloo")
    self.assertEqual(env["JAX_HEARTBEAT_TIMEOUT_SECONDS"], "5")
    self.assertEqual(env["XLA_FLAGS"].split(),
                     ["--xla_dump_to=/x", "--xla_force_host_platform_device_count=4"])
    one = local_cluster.process_env(0, 1, 1234, 8, 5, base=base)
    self.assertNotIn("JAX_PROCESS_ID", one)   # one process: a plain run
    self.assertNotIn("JAX_COORDINATOR_ADDRESS", one)
    self.assertIn("--xla_force_host_platform_device_count=8", one["XLA_FLAGS"])

  def test_data_shards_partition_the_global_batch(self):
    status, lines, _ = _run([sys.executable, "-c", _DATA_SCRIPT], 2, 4, timeout_s=300)
    self.assertEqual(status, 0, "\n".join(lines[-30:]))
    self.assertIn("[0] DATA_OK 0", lines)
    self.assertIn("[1] DATA_OK 1", lines)

  def test_a_dead_process_ends_the_job_in_bounded_time(self):
    script = textwrap.dedent("""
        import os, time
        from framework import mesh
        mesh.maybe_initialize_distributed()
        import jax
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("up")
        if jax.process_index() == 1:
          os._exit(3)                          # dies without a word
        for i in range(10_000):                # would wait for it forever
          multihost_utils.sync_global_devices(f"step {i}")
          time.sleep(0.2)
    """)
    heartbeat, grace = 5, 20.0
    status, lines, seconds = _run([sys.executable, "-c", script], 2, 2, timeout_s=600,
                                  grace_s=grace, heartbeat_s=heartbeat)
    text = "\n".join(lines)
    self.assertEqual(status, 3, text[-3000:])
    self.assertIn("local_cluster: process 1 exited with status 3", text)
    self.assertIn("local_cluster: FAILED: process 1 exited with status 3; others 0:", text)
    # Start-up (JAX import, distributed init) plus the grace period, not the 600 s limit.
    self.assertLess(seconds, 120.0, text[-3000:])


# ------------------------------------------------------------------ launch path

def _write_corpus(directory: str) -> dict[str, str]:
  """Small JSONL train/validation files (offline, deterministic)."""
  words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
  paths = {}
  for split, count in (("train", 300), ("validation", 40)):
    path = os.path.join(directory, f"{split}.jsonl")
    with open(path, "w") as f:
      for i in range(count):
        text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8 + i % 5))
        f.write(json.dumps({"text": f"{i}: {text}."}) + "\n")
    paths[split] = path
  return paths


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[str, dict[str, str]]:
  root = tempfile.mkdtemp(prefix="multiprocess_data_")
  return root, _write_corpus(root)


def _launch_command(workdir: str, *extra: str) -> list[str]:
  root, paths = _corpus()
  return [sys.executable, "-m", "experiments.launch",
          "--config=experiments/configs/lm_quickstart.py", f"--workdir={workdir}",
          "--config.data.source=files", f"--config.data.train_path={paths['train']}",
          f"--config.data.validation_path={paths['validation']}",
          f"--config.data.data_dir={root}",
          "--config.data.seq_len=16", "--config.data.global_batch_size=16",
          "--config.data.eval_batches=0",
          "--config.model.d_model=32", "--config.model.num_layers=2",
          "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
          "--config.model.head_dim=8", "--config.model.d_ff=64",
          "--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=4",
          "--config.trainer.total_steps=10", "--config.trainer.log_every=1",
          "--config.trainer.eval_every=1000", "--config.trainer.progress_every_s=0",
          "--config.checkpoint.every=5", "--config.checkpoint.async_save=False",
          *extra]


def _losses(workdir: str) -> dict[int, float]:
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "train/loss" in record:
        assert record["step"] not in out, f"step {record['step']} logged twice in {workdir}"
        out[record["step"]] = record["train/loss"]
  return out


def _step_record(workdir: str, step: int) -> tuple[dict, dict]:
  """(every array of the saved train state by tree path, data position) of a
  checkpoint step, read with orbax alone into host numpy arrays."""
  step_dir = os.path.join(workdir, "checkpoints", str(step))
  checkpointer = ocp.PyTreeCheckpointer()
  path = os.path.join(step_dir, "state")
  tree = checkpointer.metadata(path).item_metadata.tree
  restored = checkpointer.restore(path, restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
  arrays = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(restored)}
  with open(os.path.join(step_dir, "data", "metadata")) as f:
    data = json.load(f)
  return arrays, data


@functools.lru_cache(maxsize=None)
def _reference() -> str:
  """1 process x 8 devices, 10 steps (also packs the data once for the others)."""
  workdir = tempfile.mkdtemp(prefix="multiprocess_ref_")
  status, lines, _ = _run(_launch_command(workdir), 1, 8)
  assert status == 0, "\n".join(lines[-40:])
  return workdir


class LaunchTest(absltest.TestCase):

  def assert_same_run(self, workdir: str, reference: str, steps=range(1, 11)):
    # Gloo's cross-process sums add in another order than one process's
    # collectives: equal up to float32 rounding, not bit for bit.
    want, got = _losses(reference), _losses(workdir)
    self.assertEqual(sorted(got), sorted(want))
    for step in steps:
      self.assertAlmostEqual(got[step], want[step], delta=1e-5 * abs(want[step]),
                             msg=f"loss at step {step}")
    arrays, data = _step_record(workdir, 10)
    want_arrays, want_data = _step_record(reference, 10)
    self.assertEqual(sorted(arrays), sorted(want_arrays))
    self.assertLen(arrays, 64)   # params, both Adam moments, counts, step, rng
    for key, value in arrays.items():
      if np.issubdtype(value.dtype, np.floating):
        np.testing.assert_allclose(value, want_arrays[key], rtol=1e-4, atol=1e-6, err_msg=key)
      else:
        np.testing.assert_array_equal(value, want_arrays[key], err_msg=key)
    self.assertEqual({k: v for k, v in data.items() if k != "num_shards"},
                     {k: v for k, v in want_data.items() if k != "num_shards"})

  def test_two_processes_train_as_one(self):
    reference = _reference()
    workdir = self.create_tempdir().full_path
    status, lines, _ = _run(_launch_command(workdir), 2, 4)
    self.assertEqual(status, 0, "\n".join(lines[-40:]))
    self.assert_same_run(workdir, reference)
    self.assertEqual(_step_record(workdir, 10)[1]["num_shards"], 2)
    # Both processes wrote their shards of the checkpoint.
    state_dir = os.path.join(workdir, "checkpoints", "10", "state")
    self.assertTrue({"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir)))
    # Progress and the summary come from process 0 only.
    self.assertTrue(any(line.startswith("[0] [train]") for line in lines))
    self.assertFalse(any(line.startswith("[1] [train]") for line in lines))
    self.assertTrue(any(line.startswith('[0]   "final_step": 10') for line in lines))
    self.assertFalse(any(line.startswith('[1]   "final_step"') for line in lines))
    with open(os.path.join(workdir, "summary.json")) as f:
      self.assertEqual(json.load(f)["final_step"], 10)

  @pytest.mark.slow
  def test_killed_job_resumes_on_two_processes_and_on_one(self):
    reference = _reference()
    root = self.create_tempdir().full_path
    workdir = os.path.join(root, "two")
    ckpt = os.path.join(workdir, "checkpoints")
    # A checkpoint every step (synchronous): kill both processes once one
    # from step 3 on is on disk, while later steps run.
    extra = ("--config.checkpoint.every=1",)

    def saved_step_3():
      try:
        return any(n.isdigit() and int(n) >= 3 for n in os.listdir(ckpt))
      except FileNotFoundError:
        return False
    status, lines, _ = _run(_launch_command(workdir, *extra), 2, 4, until=saved_step_3)
    text = "\n".join(lines)
    self.assertNotEqual(status, 0, text[-3000:])
    self.assertIn("killed by SIGKILL", text)
    finished = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
    self.assertLess(finished, 10, "the job ended before it was killed")
    copy = os.path.join(root, "one")
    shutil.copytree(workdir, copy)

    for path, n, devices in ((workdir, 2, 4), (copy, 1, 8)):
      status, lines, _ = _run(_launch_command(path, *extra), n, devices)
      text = "\n".join(lines)
      self.assertEqual(status, 0, text[-3000:])
      with open(os.path.join(path, "summary.json")) as f:
        summary = json.load(f)
      self.assertGreaterEqual(summary["resumed_from"], 3)
      self.assertEqual(summary["final_step"], 10)
      self.assert_same_run(path, reference)


if __name__ == "__main__":
  absltest.main()
