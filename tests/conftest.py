"""One XLA compilation cache for the whole test session, programs compiled without LLVM's
optimisations, the slowest tests first, and hypothesis's property tests reproducible
(derandomized: every run draws the same examples; no example database in the checkout).

Most of a smoke run's time here is compiling (measured: a :smoke main run 215 s cold, 39 s with
its programs in JAX's persistent cache). Many tests train or evaluate the same smoke programs —
in both xdist workers and in the subprocesses some tests start — so they share one cache,
made empty for each session (a run measures a cold start) and removed at its end. A
JAX_COMPILATION_CACHE_DIR already set by the user is used as it is and kept.
"""

import os
import shutil
import tempfile

import hypothesis

hypothesis.settings.register_profile("vsr_jax", derandomize=True, database=None, deadline=None,
                                     max_examples=60, print_blob=True)
hypothesis.settings.load_profile("vsr_jax")

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
OWNED = "VSR_JAX_TEST_OWNS_CACHE"


def pytest_configure(config):
  if "PYTEST_XDIST_WORKER" in os.environ:
    return   # a worker inherits the controller's environment (set below, before it starts)
  if not os.environ.get(CACHE_ENV):
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="vsr_jax_test_xla_cache_")
    os.environ[OWNED] = "1"
  # LLVM's optimisation passes are most of a CPU compile; the tests' programs are tiny, so
  # they compile without them (measured: a :smoke run 186 -> 113 CPU seconds, metrics.json
  # identical). Tests that start processes with their own XLA_FLAGS append to these.
  flag = "--xla_backend_optimization_level=0"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  # Every program, however quick to compile: the smoke programs are many small ones.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_unconfigure(config):
  if "PYTEST_XDIST_WORKER" not in os.environ and os.environ.pop(OWNED, None):
    shutil.rmtree(os.environ.pop(CACHE_ENV), ignore_errors=True)


# Modules whose tests (or module fixtures) train whole smoke runs: started first, so that two
# xdist workers do not end on one long module while the other idles.
SLOW_FIRST = ("test_train.py", "test_sharding.py", "test_sweep.py", "test_api.py",
              "test_hosts.py", "test_grpo.py", "test_experiments_real_language_standin.py",
              "test_qwen3_smoke.py", "test_qwen3_trunk.py")


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)
  items.sort(key=rank)   # stable: each module keeps its own order
