"""Tests for vsr_jax.engine.index: ExactIndex (one device and sharded) and ScannIndex."""
import functools
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import hypothesis
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import procs
from vsr_jax import config_lib, sharding
from vsr_jax.config_lib import ConfigError
from vsr_jax.engine import index as index_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def brute_force(vectors, q, k, gt=None):
  """Exact top-k over integer-valued vectors: order by (-score, id); rank of gt (1 = top)."""
  scores = np.einsum("...e,ve->...v", np.asarray(q, np.int64), np.asarray(vectors, np.int64))
  flat = scores.reshape(-1, scores.shape[-1])
  ids = np.arange(flat.shape[1])
  order = np.stack([np.lexsort((ids, -row)) for row in flat])
  top_i = order[:, :k]
  top_s = np.take_along_axis(flat, top_i, 1)
  lead = scores.shape[:-1]
  out = [top_s.reshape(*lead, k), top_i.reshape(*lead, k)]
  if gt is not None:
    rank = np.array([list(o).index(g) + 1 for o, g in zip(order, np.ravel(gt))])
    out.append(rank.reshape(lead))
  return out


def integer_corpus(seed=0, V=10, E=6):
  """Small integer vectors (exact float sums) with duplicates, so that scores tie."""
  rng = np.random.default_rng(seed)
  vectors = rng.integers(-3, 4, (V, E))
  vectors[8] = vectors[1]
  vectors[9] = vectors[4]
  vectors[5] = vectors[4]
  return vectors.astype(np.float32)


# ----------------------------------------------------------------------------- ExactIndex


def test_check_top_k():
  index_lib.check_top_k(1, 5)
  index_lib.check_top_k(5, 5)
  for k in (0, 6):
    with pytest.raises(ConfigError, match=f"k={k} must be between 1 and the corpus size 5"):
      index_lib.check_top_k(k, 5)


def test_brute_force_breaks_ties_to_the_lower_index():
  # Guard for the reference itself: equal scores are ordered by id.
  s, i = brute_force(np.array([[1, 0], [2, 0], [2, 0], [0, 0]]), np.array([[1, 0]]), 4)
  np.testing.assert_array_equal(i, [[1, 2, 0, 3]])
  np.testing.assert_array_equal(s, [[2, 2, 1, 0]])


@pytest.mark.parametrize("k", [1, 4, 10])
def test_exact_index_matches_brute_force(k):
  vectors = integer_corpus()
  rng = np.random.default_rng(1)
  q = rng.integers(-2, 3, (2, 3, 6)).astype(np.float32)        # [G, B, E]
  q[0, 0] = 0                                                  # every score ties
  gt = rng.integers(0, 10, (2, 3))
  gt[0, 1], gt[1, 2], gt[0, 0] = 8, 5, 9                       # duplicates of other rows
  index = index_lib.ExactIndex.build(vectors)
  assert index.size == 10
  s, i = index.search(jnp.asarray(q), k)
  s2, i2, rank = index.search_and_rank(jnp.asarray(q), k, jnp.asarray(gt))
  bs, bi, brank = brute_force(vectors, q, k, gt)
  assert s.shape == i.shape == (2, 3, k) and rank.shape == (2, 3)
  assert i.dtype == jnp.int32 and rank.dtype == jnp.int32
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_array_equal(s, bs)
  np.testing.assert_array_equal(i2, bi)
  np.testing.assert_array_equal(s2, bs)
  np.testing.assert_array_equal(rank, brank)
  # Rank is consistent with the list: a gt ranked r <= k sits at position r.
  for g, r, row in zip(gt.ravel(), np.asarray(rank).ravel(), bi.reshape(-1, k)):
    if r <= k:
      assert row[r - 1] == g


def test_exact_index_ranks_every_video():
  vectors = integer_corpus(seed=2)
  q = np.random.default_rng(3).integers(-2, 3, (10, 6)).astype(np.float32)
  index = index_lib.ExactIndex.build(vectors)
  for g in range(10):
    gt = np.full(10, g)
    _, _, rank = index.search_and_rank(jnp.asarray(q), 3, jnp.asarray(gt))
    np.testing.assert_array_equal(rank, brute_force(vectors, q, 3, gt)[2])


def test_exact_index_under_jit_and_as_pytree():
  vectors = integer_corpus()
  q = np.random.default_rng(4).integers(-2, 3, (4, 6)).astype(np.float32)
  gt = np.array([1, 8, 4, 0])
  index = index_lib.ExactIndex.build(vectors)
  fn = jax.jit(lambda idx, qq, g: idx.search_and_rank(qq, 3, g))
  s, i, rank = fn(index, jnp.asarray(q), jnp.asarray(gt))
  bs, bi, brank = brute_force(vectors, q, 3, gt)
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_array_equal(rank, brank)
  leaves, treedef = jax.tree.flatten(index)
  assert len(leaves) == 1 and leaves[0].shape == (10, 6)
  assert jax.tree.unflatten(treedef, leaves).num_valid == 10


def test_build_index_exact_backend():
  config = config_lib.load(SMOKE)
  idx = index_lib.build_index(config, integer_corpus())
  assert isinstance(idx, index_lib.ExactIndex) and idx.mesh is None
  # A mesh without a corpus axis keeps one (replicated) array.
  mesh = sharding.make_mesh(config.mesh)
  assert index_lib.build_index(config, integer_corpus(), mesh=mesh).mesh is None


SHARDED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import jax, jax.numpy as jnp
    import ml_collections
    from vsr_jax import sharding
    from vsr_jax.engine import index as index_lib
    assert len(jax.devices()) == 4, jax.devices()
    data = json.load(sys.stdin)
    vectors = np.array(data["vectors"], np.float32)
    q = np.array(data["q"], np.float32)
    gt = np.array(data["gt"], np.int32)
    def mesh(data, corpus):
        return sharding.make_mesh(ml_collections.ConfigDict(
            {"data": data, "corpus": corpus, "model": 1}))
    sharded = index_lib.ExactIndex.build(vectors, mesh(1, 4))
    sharded22 = index_lib.ExactIndex.build(vectors, mesh(2, 2))   # queries split over data too
    single = index_lib.ExactIndex.build(vectors)
    out = {"padded_rows": int(sharded.vectors.shape[0]), "num_shards":
           len(sharded.vectors.sharding.device_set),
           "shard_rows": [s.data.shape[0] for s in sharded.vectors.addressable_shards],
           "shard_rows22": [s.data.shape[0] for s in sharded22.vectors.addressable_shards],
           "results": {}}
    for k in data["ks"]:
        res = {}
        for name, idx in (("sharded", sharded), ("sharded22", sharded22), ("single", single)):
            # Under jit (eager shard_map dispatch costs seconds per call).
            s, i, r = jax.jit(lambda qq, g: idx.search_and_rank(qq, k, g))(q, gt)
            s0, i0 = jax.jit(lambda qq: idx.search(qq, k))(q)
            res[name] = {"s": np.asarray(s).tolist(), "i": np.asarray(i).tolist(),
                         "rank": np.asarray(r).tolist(), "s0": np.asarray(s0).tolist(),
                         "i0": np.asarray(i0).tolist()}
        out["results"][str(k)] = res
    if data["scann"]:
        # ScaNN's list of depth 10; ranks beyond it counted by the corpus-split device copy.
        fv = np.array(data["scann"]["vectors"], np.float32)
        cfg = ml_collections.ConfigDict(data["scann"]["cfg"])
        sc = index_lib.ScannIndex.build(fv, cfg, mesh=mesh(1, 4), rank_depth=10)
        fq = np.array(data["scann"]["q"], np.float32)
        fgt = np.array(data["scann"]["gt"], np.int32)
        _, i, r = jax.jit(lambda ix, qq, g: ix.search_and_rank(qq, 3, g))(sc, fq, fgt)
        # 'bound': ranks beyond the list reported as depth + 1, no device copy at all.
        cfg.beyond = "bound"
        sb = index_lib.ScannIndex.build(fv, cfg, mesh=mesh(2, 2), rank_depth=10)
        _, ib, rb = jax.jit(lambda ix, qq, g: ix.search_and_rank(qq, 3, g))(sb, fq, fgt)
        out["scann"] = {"i": np.asarray(i).tolist(), "rank": np.asarray(r).tolist(),
                        "shards": len(sc.exact.vectors.sharding.device_set),
                        "searchers": {str(k): v.num_vectors
                                      for k, v in sc.searchers.by_shard.items()},
                        "bound": {"i": np.asarray(ib).tolist(), "rank": np.asarray(rb).tolist(),
                                  "exact": sb.exact is not None, "cap": sb.beyond_rank,
                                  "searchers": sorted(sb.searchers.by_shard)}}
    print("RESULT" + json.dumps(out))
""")


def test_sharded_exact_index_equals_unsharded():
  """4 simulated CPU devices (a fresh process: XLA_FLAGS must be set before jax starts)."""
  vectors = integer_corpus(seed=5)          # 10 rows -> padded to 12, 3 rows per shard
  rng = np.random.default_rng(6)
  q = rng.integers(-2, 3, (2, 5, 6))
  q[0, 0] = 0
  gt = rng.integers(0, 10, (2, 5))
  gt[0, :4] = [1, 8, 9, 5]                  # duplicates in other shards
  ks = [1, 3, 7, 10]                        # 7, 10 > rows per shard
  scann = None
  if importlib.util.find_spec("scann"):
    fv = float_corpus(seed=2)
    fq = np.random.default_rng(3).standard_normal((2, 4, E_SCANN)).astype(np.float32)
    _, order = float_brute_force(fv, fq, 1)
    franks = np.array([[1, 5, 10, 11], [12, 60, 150, 200]])   # in ScaNN's list of 10, beyond
    fgt = np.take_along_axis(order, (franks - 1)[..., None], -1)[..., 0]
    scann = {"vectors": fv.tolist(), "q": fq.tolist(), "gt": fgt.tolist(),
             "cfg": scann_cfg().to_dict()}
  env = dict(os.environ,
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env,
                        input=json.dumps({"vectors": vectors.tolist(), "q": q.tolist(),
                                          "gt": gt.tolist(), "ks": ks, "scann": scann}),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
  out = json.loads(line[len("RESULT"):])
  assert out["padded_rows"] == 12 and out["num_shards"] == 4
  assert out["shard_rows"] == [3, 3, 3, 3]          # each device a quarter of the rows
  assert out["shard_rows22"] == [5, 5, 5, 5]        # halves, each on two data replicas
  for k in ks:
    res = out["results"][str(k)]
    bs, bi, brank = brute_force(vectors, q, k, gt)
    for name in ("sharded", "sharded22", "single"):
      np.testing.assert_array_equal(res[name]["i"], bi, err_msg=f"{name} k={k}")
      np.testing.assert_array_equal(res[name]["s"], bs, err_msg=f"{name} k={k}")
      np.testing.assert_array_equal(res[name]["rank"], brank, err_msg=f"{name} k={k}")
      np.testing.assert_array_equal(res[name]["i0"], bi, err_msg=f"{name} jit k={k}")
      np.testing.assert_array_equal(res[name]["s0"], bs, err_msg=f"{name} jit k={k}")
  if scann:
    # One searcher per corpus shard (a quarter of the vectors each), merged into the exact
    # list (every leaf searched); ranks past the list from the corpus-split device copy.
    assert out["scann"]["shards"] == 4
    assert out["scann"]["searchers"] == {"0": 50, "1": 50, "2": 50, "3": 50}
    np.testing.assert_array_equal(out["scann"]["rank"], franks)
    np.testing.assert_array_equal(out["scann"]["i"], float_brute_force(fv, fq, 3)[0][1])
    bound = out["scann"]["bound"]
    assert not bound["exact"] and bound["cap"] == 11 and bound["searchers"] == [0, 1]
    np.testing.assert_array_equal(bound["rank"], np.where(franks <= 10, franks, 11))
    np.testing.assert_array_equal(bound["i"], float_brute_force(fv, fq, 3)[0][1])


MULTI_PROCESS_SCANN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    import ml_collections
    from vsr_jax import hosts, sharding
    from vsr_jax.engine import index as index_lib
    coordinator, pid, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, 2, pid, initialization_timeout=60)
    with open(f"{tmp}/input.json") as f:
        data = json.load(f)
    fv = np.array(data["vectors"], np.float32)
    fq = np.array(data["q"], np.float32)
    fgt = np.array(data["gt"], np.int32)
    cfg = ml_collections.ConfigDict(data["cfg"])
    out = {}
    for d, c in ((1, 4), (2, 2)):
        mesh = sharding.make_mesh(ml_collections.ConfigDict(
            {"data": d, "corpus": c, "model": 1}))
        ix = index_lib.ScannIndex.build(fv, cfg, mesh=mesh, rank_depth=10,
                                        directory=f"{tmp}/p{pid}_{d}x{c}")
        _, i, r = jax.jit(lambda ix, qq, g: ix.search_and_rank(qq, 3, g))(ix, fq, fgt)
        out[f"{d}x{c}"] = {"i": hosts.fetch(i).tolist(), "rank": hosts.fetch(r).tolist(),
                           "searchers": sorted(ix.searchers.by_shard)}
    print("RESULT" + json.dumps(out), flush=True)
""")


def test_scann_over_two_processes_searches_each_hosts_own_shards(tmp_path):
  """2 processes x 2 CPU devices: each process builds searchers only for the corpus shards its
  devices hold, each device searches its own, and the merged lists and ranks are exact."""
  pytest.importorskip("scann")
  fv = float_corpus(seed=2)
  fq = np.random.default_rng(3).standard_normal((8, E_SCANN)).astype(np.float32)
  _, order = float_brute_force(fv, fq, 1)
  franks = np.array([1, 5, 10, 11, 12, 60, 150, 200])
  fgt = np.take_along_axis(order, (franks - 1)[:, None], -1)[:, 0]
  (tmp_path / "input.json").write_text(json.dumps(
      {"vectors": fv.tolist(), "q": fq.tolist(), "gt": fgt.tolist(),
       "cfg": scann_cfg().to_dict()}))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=2")
  coordinator = f"127.0.0.1:{procs.free_port()}"
  runs = [subprocess.Popen([sys.executable, "-c", MULTI_PROCESS_SCANN, coordinator, str(pid),
                            str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for pid in (0, 1)]
  outs = [p.communicate(timeout=180) for p in runs]
  for p, (_, err) in zip(runs, outs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads([x for x in o.splitlines() if x.startswith("RESULT")][-1][6:])
             for o, _ in outs]
  want_i = float_brute_force(fv, fq, 3)[0][1]
  for pid, res in enumerate(results):
    assert res["1x4"]["searchers"] == [2 * pid, 2 * pid + 1]
    assert res["2x2"]["searchers"] == [0, 1]         # both corpus halves on each process
    for mesh in ("1x4", "2x2"):
      np.testing.assert_array_equal(res[mesh]["i"], want_i, err_msg=f"{mesh} process {pid}")
      np.testing.assert_array_equal(res[mesh]["rank"], franks, err_msg=f"{mesh} process {pid}")


@functools.lru_cache(maxsize=None)
def _exact_fn(k):
  return jax.jit(lambda v, q, g: index_lib.ExactIndex(v, v.shape[0]).search_and_rank(q, k, g))


@hypothesis.given(
    hnp.arrays(np.int8, (12, 4), elements=st.integers(-2, 2)),
    hnp.arrays(np.int8, (5, 4), elements=st.integers(-2, 2)),
    hnp.arrays(np.int32, (5,), elements=st.integers(0, 11)),
    st.sampled_from([1, 4, 12]))
def test_exact_top_k_and_ranks_against_numpy_on_random_corpora_with_ties(v, q, gt, k):
  """Small integer vectors (exact float sums): many scores tie, and ties go to the lower id
  in the list and in the rank alike."""
  s, i, r = _exact_fn(k)(jnp.asarray(v, jnp.float32), jnp.asarray(q, jnp.float32),
                         jnp.asarray(gt))
  bs, bi, brank = brute_force(v, q, k, gt)
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_array_equal(s, bs)
  np.testing.assert_array_equal(r, brank)


# ----------------------------------------------------------------------------- ScaNN


V_SCANN, E_SCANN = 200, 8


def scann_cfg(**changes):
  """Every leaf searched and every point reordered exactly: ScaNN gives the exact answer."""
  values = {"num_leaves": 4, "num_leaves_to_search": 4, "training_sample_size": V_SCANN,
            "dims_per_block": 2, "anisotropic_quantization_threshold": 0.2,
            "reorder": V_SCANN, "threads": 1}
  values.update(changes)
  return ml_collections.ConfigDict(values)


def float_corpus(seed=0, V=V_SCANN):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((V, E_SCANN)).astype(np.float32)


def float_brute_force(vectors, q, k, gt=None):
  scores = np.asarray(q, np.float64) @ np.asarray(vectors, np.float64).T
  order = np.argsort(-scores, axis=-1, kind="stable")
  out = [np.take_along_axis(scores, order[..., :k], -1), order[..., :k]]
  if gt is not None:
    out.append(np.argmax(order == np.asarray(gt)[..., None], -1) + 1)
  return out, order


@pytest.fixture(scope="module")
def scann_setup(tmp_path_factory):
  pytest.importorskip("scann")
  vectors = float_corpus()
  directory = str(tmp_path_factory.mktemp("scann") / "index")
  idx = index_lib.ScannIndex.build(vectors, scann_cfg(), directory=directory)
  rng = np.random.default_rng(1)
  q = rng.standard_normal((3, 4, E_SCANN)).astype(np.float32)   # [G, B, E]
  _, order = float_brute_force(vectors, q, 1)
  # Ground truths at chosen true ranks: inside the searched list (depth 100) and beyond it.
  true_ranks = np.array([[1, 2, 50, 100], [101, 102, 150, 200], [3, 77, 120, 199]])
  gt = np.take_along_axis(order, (true_ranks - 1)[..., None], -1)[..., 0]
  return vectors, directory, idx, q, gt, true_ranks


def test_scann_params():
  p = index_lib.scann_params(scann_cfg(num_leaves=0, num_leaves_to_search=0,
                                       training_sample_size=64), 200)
  assert p["num_leaves"] == 14                      # round(sqrt(200))
  assert p["num_leaves_to_search"] == 1             # 14 // 10
  assert p["training_sample_size"] == 64
  p = index_lib.scann_params(scann_cfg(num_leaves=50, num_leaves_to_search=80), 20)
  assert p["num_leaves"] == 20 and p["num_leaves_to_search"] == 20
  assert p["training_sample_size"] == 20
  # A sample smaller than the leaves (the :smoke preset's 64 on a large corpus) is raised to
  # one point per leaf (ScaNN refuses fewer).
  p = index_lib.scann_params(scann_cfg(num_leaves=0, training_sample_size=64), 1_000_000)
  assert p["num_leaves"] == 1000 and p["training_sample_size"] == 1000


def test_scann_exact_when_searching_everything(scann_setup):
  vectors, _, idx, q, gt, true_ranks = scann_setup
  assert idx.size == V_SCANN
  k = 5
  s, i = idx.search(jnp.asarray(q), k)
  (bs, bi), _ = float_brute_force(vectors, q, k)
  assert s.shape == i.shape == (3, 4, k) and i.dtype == jnp.int32
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_allclose(s, bs, rtol=1e-5, atol=1e-5)
  s2, i2, rank = idx.search_and_rank(jnp.asarray(q), k, jnp.asarray(gt))
  np.testing.assert_array_equal(i2, bi)
  np.testing.assert_array_equal(rank, true_ranks)


def test_scann_under_jit_and_vmap(scann_setup):
  vectors, _, idx, q, gt, true_ranks = scann_setup
  (bs, bi), _ = float_brute_force(vectors, q, 3)
  s, i, rank = jax.jit(lambda qq, g: idx.search_and_rank(qq, 3, g))(jnp.asarray(q),
                                                                    jnp.asarray(gt))
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_array_equal(rank, true_ranks)
  s, i, rank = jax.vmap(lambda qq, g: idx.search_and_rank(qq, 3, g))(jnp.asarray(q),
                                                                     jnp.asarray(gt))
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_array_equal(rank, true_ranks)
  s, i = jax.jit(jax.vmap(lambda qq: idx.search(qq, 3)))(jnp.asarray(q))
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_allclose(s, bs, rtol=1e-5, atol=1e-5)
  # The index as an argument of a jitted function (its leaves: the device copy's vectors).
  s, i = jax.jit(lambda ix, qq: ix.search(qq, 3))(idx, jnp.asarray(q))
  np.testing.assert_array_equal(i, bi)


def test_scann_reloads_without_rebuilding(scann_setup, monkeypatch):
  vectors, directory, idx, q, gt, true_ranks = scann_setup
  # One searcher per corpus shard, each in its own folder (here one shard: no mesh).
  assert os.listdir(directory) == ["shard_0_of_1"]
  with open(os.path.join(directory, "shard_0_of_1", "vsr_meta.json")) as f:
    meta = json.load(f)
  assert meta["num_vectors"] == V_SCANN and meta["params"]["num_leaves"] == 4

  def no_build(*args, **kwargs):
    raise AssertionError("build_scann called although a matching index is saved")

  monkeypatch.setattr(index_lib, "build_scann", no_build)
  again = index_lib.ScannIndex.build(vectors.copy(), scann_cfg(), directory=directory)
  s, i, rank = again.search_and_rank(jnp.asarray(q), 4, jnp.asarray(gt))
  (bs, bi), _ = float_brute_force(vectors, q, 4)
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_array_equal(rank, true_ranks)


def test_scann_rebuilds_when_vectors_or_params_change(scann_setup, tmp_path, monkeypatch):
  vectors, directory, _, q, _, _ = scann_setup
  directory = str(tmp_path / "index")
  index_lib.ScannIndex.build(vectors, scann_cfg(), directory=directory)
  calls = []
  real_build = index_lib.build_scann

  def counting_build(*args, **kwargs):
    calls.append(1)
    return real_build(*args, **kwargs)

  monkeypatch.setattr(index_lib, "build_scann", counting_build)
  changed = vectors.copy()
  changed[7] = -changed[7]
  idx = index_lib.ScannIndex.build(changed, scann_cfg(), directory=directory)
  assert len(calls) == 1
  (bs, bi), _ = float_brute_force(changed, q, 5)
  np.testing.assert_array_equal(idx.search(jnp.asarray(q), 5)[1], bi)
  # The new index was saved: building over the changed vectors again reloads it.
  index_lib.ScannIndex.build(changed, scann_cfg(), directory=directory)
  assert len(calls) == 1
  # Other parameters also force a rebuild.
  index_lib.ScannIndex.build(changed, scann_cfg(reorder=150), directory=directory)
  assert len(calls) == 2
  assert os.listdir(directory) == ["shard_0_of_1"]        # no half-written .partial left


def test_scann_bound_reports_beyond_the_list_as_depth_plus_one(scann_setup):
  """index.scann.beyond='bound': no device copy; a ground truth past the list of depth 100
  gets rank 101, one inside it its position (R@k up to 100 unchanged)."""
  vectors, _, _, q, gt, true_ranks = scann_setup
  idx = index_lib.ScannIndex.build(vectors, scann_cfg(beyond="bound"))
  assert idx.exact is None and idx.beyond_rank == 101
  assert jax.tree.leaves(idx) == []
  _, i, rank = jax.jit(lambda ix, qq, g: ix.search_and_rank(qq, 3, g))(idx, jnp.asarray(q),
                                                                       jnp.asarray(gt))
  np.testing.assert_array_equal(rank, np.minimum(true_ranks, 101))
  np.testing.assert_array_equal(i, float_brute_force(vectors, q, 3)[0][1])
  with pytest.raises(ConfigError, match=r"index.scann.beyond='nearest': expected one of "
                     r"'exact', 'bound'"):
    index_lib.ScannIndex.build(vectors, scann_cfg(beyond="nearest"))


def test_scann_lists_deeper_than_rank_depth(scann_setup):
  """k above the rank depth (eval.tvr_top_k > 100): the list is k deep, ranks inside it."""
  vectors, _, _, q, gt, true_ranks = scann_setup
  idx = index_lib.ScannIndex.build(vectors, scann_cfg(), rank_depth=10)
  _, i, rank = jax.jit(lambda ix, qq, g: ix.search_and_rank(qq, 120, g))(idx, jnp.asarray(q),
                                                                         jnp.asarray(gt))
  np.testing.assert_array_equal(i, float_brute_force(vectors, q, 120)[0][1])
  np.testing.assert_array_equal(rank, true_ranks)


def test_scann_small_shard_is_searched_by_brute_force():
  """Fewer vectors than asymmetric hashing's 16 centres (a small corpus shard): exact search."""
  pytest.importorskip("scann")
  vectors = float_corpus(seed=4, V=5)
  idx = index_lib.ScannIndex.build(vectors, scann_cfg())
  q = np.random.default_rng(2).standard_normal((3, E_SCANN)).astype(np.float32)
  (_, bi), order = float_brute_force(vectors, q, 4)
  _, i, rank = idx.search_and_rank(jnp.asarray(q), 4, jnp.asarray(order[:, 4]))
  np.testing.assert_array_equal(i, bi)
  np.testing.assert_array_equal(rank, [5, 5, 5])


def test_build_index_scann_backend(tmp_path):
  pytest.importorskip("scann")
  config = config_lib.load(SMOKE, {"index.backend": "scann", "index.scann.num_leaves": "2",
                                   "index.scann.num_leaves_to_search": "2",
                                   "index.scann.reorder": "50", "index.scann.threads": "1"})
  vectors = float_corpus(seed=3, V=50)
  idx = index_lib.build_index(config, vectors, directory=str(tmp_path / "ix"))
  assert isinstance(idx, index_lib.ScannIndex)
  q = np.random.default_rng(4).standard_normal((6, E_SCANN)).astype(np.float32)
  (_, bi), _ = float_brute_force(vectors, q, 2)
  np.testing.assert_array_equal(idx.search(jnp.asarray(q), 2)[1], bi)


def test_scann_partial_search_returns_no_padding():
  pytest.importorskip("scann")
  vectors = float_corpus(seed=0, V=64)
  # The smoke test split's size with the default search fraction: 8 leaves, 1 searched.
  idx = index_lib.ScannIndex.build(vectors, scann_cfg(num_leaves=8, num_leaves_to_search=1,
                                                      training_sample_size=64, reorder=100))
  q = np.random.default_rng(1).standard_normal((6, E_SCANN)).astype(np.float32)
  gt = np.zeros(6, np.int32)
  s, i, rank = (np.asarray(x) for x in idx.search_and_rank(jnp.asarray(q), 30,
                                                            jnp.asarray(gt)))
  assert not np.isnan(s).any(), f"NaN scores returned: {s}"
  real = np.isfinite(s)                  # a fix may mark missing entries with -inf
  for row_i, row_real, r in zip(i, real, rank):
    ids = row_i[row_real].tolist()
    assert len(set(ids)) == len(ids) and all(0 <= x < 64 for x in ids), row_i
    if 0 in ids:
      assert r == ids.index(0) + 1
    else:
      assert r > len(ids)            # never the position of a padding entry


def test_scann_missing_is_a_clear_error(monkeypatch):
  """Where ScaNN has no wheel (macOS, Windows) the backend names the package and the way out."""
  monkeypatch.setitem(sys.modules, "scann", None)   # `import scann` raises ImportError
  with pytest.raises(ConfigError, match=r"index.backend='scann' needs the scann package.*"
                     r"config.index.backend='exact'"):
    index_lib.ScannIndex.build(integer_corpus(), scann_cfg())
