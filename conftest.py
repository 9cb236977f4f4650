"""Test-session setup shared by tests/ and parity_tests/.

Four host CPU devices let the data-parallel code run on one CPU; the flag must
be set before JAX is imported anywhere.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
