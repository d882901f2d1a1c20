"""Test-wide environment: 8 fake CPU devices, one OpenBLAS thread.

Set before JAX or numpy is imported anywhere, so every test sees the same
8-device CPU platform; single-device references use `jax.devices()[:1]`.
"""
import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = _flags.strip()
# jaxlib's CPU eigh is erratic with multi-threaded OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# absltest helpers (create_tempdir, ...) read absl flags; pytest never parses them.
from absl import flags as _absl_flags  # noqa: E402

if not _absl_flags.FLAGS.is_parsed():
  _absl_flags.FLAGS.mark_as_parsed()
