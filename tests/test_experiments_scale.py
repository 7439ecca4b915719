"""Tests for the arithmetic of experiments/scale_benchmark.py (growth per x10, the 100x check)
and of experiments/step_efficiency.py's HLO accounting (while loops' trip counts)."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  # The scripts define --config (as vsr_jax.main does) and --seed (as soak.py does): the
  # later definition replaces the earlier.
  for flag in ("config", "seed"):
    if flag in flags.FLAGS:
      delattr(flags.FLAGS, flag)
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


scale = load("scale_benchmark")
step = load("step_efficiency")


def test_growth_per_decade():
  # 1e3 -> 1e4: x4; 1e4 -> 1e6 (two decades): x9 = x3 per decade.
  g = scale.growth_per_decade([1000, 10000, 1000000], [1.0, 4.0, 36.0])
  assert g[0] is None
  assert g[1] == pytest.approx(4.0)
  assert g[2] == pytest.approx(3.0)


def test_growth_checks_pairs_100x_apart():
  sizes = [1000, 10000, 100000, 1000000]
  checks = scale.growth_checks(sizes, [1.0, 2.0, 9.0, 40.0])
  assert [(n0, int(n1)) for n0, n1, _, _ in checks] == [(1000, 100000), (10000, 1000000)]
  assert checks[0][2] == pytest.approx(9.0) and checks[0][3]           # 9x < 10x: holds
  assert checks[1][2] == pytest.approx(20.0) and not checks[1][3]      # 20x: does not
  assert scale.growth_checks([1000, 10000], [1.0, 2.0]) == []


def test_hlo_costs_counts_every_trip_of_a_loop():
  def f(a, b):
    return jax.lax.scan(lambda c, _: (c @ b, None), a, None, length=4)[0]

  a = jnp.ones((32, 32))
  compiled = jax.jit(f).lower(a, a).compile()
  costs = step.hlo_costs(compiled.as_text())
  matmuls = 2 * 32 ** 3
  assert 4 in costs["loops"]
  assert costs["flops"] == pytest.approx(4 * matmuls, rel=0.05)
  assert costs["flops_once"] == pytest.approx(matmuls, rel=0.05)
  # XLA's own count has the body once.
  assert step.cost_flops(compiled) == pytest.approx(costs["flops_once"], rel=0.05)


def test_write_frames_in_chunks_is_one_memory_mapped_array(tmp_path):
  import numpy as np   # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "f.npy")
  got = scale.write_frames(path, 10, 3, 2, np.float16, np.random.default_rng(0), chunk=4)
  assert isinstance(got, np.memmap) and got.shape == (10, 3, 2) and got.dtype == np.float16
  rng = np.random.default_rng(0)
  want = np.concatenate([rng.standard_normal((n, 3, 2), dtype=np.float32) for n in (4, 4, 2)])
  np.testing.assert_array_equal(got, want.astype(np.float16))
  assert os.path.getsize(path) == 128 + 10 * 3 * 2 * 2        # header + the rows, no more
