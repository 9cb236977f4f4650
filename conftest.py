"""Test-session setup shared by tests/ and parity_tests/.

Four host CPU devices let the data-parallel code run on one CPU; the flag must
be set before JAX is imported anywhere.
"""

import os

from jax_dcgan.common.runtime import force_host_devices, quiet_absent_accelerators  # imports no JAX

# XLA's GPU compiler is installed for tests/test_compile.py, which compiles for GPUs without
# using one: the suite runs on CPU devices wherever it runs, and on a machine without a GPU
# the plugin must not log a traceback at every JAX start (the command line does the same).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
quiet_absent_accelerators()
force_host_devices(4)  # the tests' subprocesses inherit the setting
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# A persistent compilation cache for each pytest-xdist worker, its subprocesses included:
# the suite compiles the same tiny step programs and FID's network in dozens of processes.
# Not one for all workers: JAX writes an entry in place, unlocked, while another process may
# be reading it; with a size limit JAX locks each read and write, but then each write also
# reads every entry's files to decide what to evict (2,800 entries by a suite run's end),
# under the lock that both workers wait on. Set here in each worker (which inherits the
# controller's environment), under $JAX_DCGAN_TEST_XLA_CACHE. The tests of the cache itself
# give their processes their own (tests/test_train.py).
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
    os.environ.setdefault("JAX_DCGAN_TEST_XLA_CACHE", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), ".pytest_cache", "jax-dcgan", "xla")),
    os.environ.get("PYTEST_XDIST_WORKER", "main"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The FID network's converted weights, made once per checkout rather than in the home cache.
os.environ.setdefault("JAX_DCGAN_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      ".pytest_cache", "jax-dcgan"))
