"""Nearest-neighbour search over the corpus' video vectors, behind one interface.

Both backends are pytrees that can be passed into jitted code and answer
  search(q [..., E], k)            -> scores [..., k], ids [..., k] (best first)
  search_and_rank(q, k, gt [...])  -> scores, ids, rank [...] (1 = the ground truth is top-1)
  size                             -> the number of videos (a Python int)
* ExactIndex: matmul + lax.top_k on device; on a mesh with a 'corpus' axis the vectors are
  split along it (each shard finds its own top-k for its slice of the queries, then the
  shards' candidates are merged).
* ScannIndex: ScaNN (tree + asymmetric hashing + exact reorder) on the host through
  jax.pure_callback, for corpora too large to search exactly: one searcher per corpus shard,
  built (or reloaded from the workdir) by the process whose devices hold the shard; each
  device searches its shard for its queries and the lists are merged over 'corpus'.
Ranks are exact and consistent with the returned list: ties in score go to the lower video
index, as lax.top_k orders them. For ScaNN, the rank of a ground truth found in the searched
list (depth max(k, rank_depth)) is its position there; otherwise (index.scann.beyond) either
its exact rank over the corpus, but never less than the list's length + 1, counted on the
device (an ExactIndex over the same vectors, split over the mesh's 'corpus' axis: the host
does only ScaNN's own search, never a pass over the corpus), or the depth + 1 without looking
('bound': no O(V) work at all). When ScaNN finds fewer than k neighbours, the missing entries
have id -1 and score -inf.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, PartitionSpec as P

from vsr_jax import registry, sharding
from vsr_jax.config_lib import ConfigError

_NEG = -jnp.inf


def check_top_k(k: int, num_videos: int, what: str = "index top-k") -> None:
  if not 1 <= k <= num_videos:
    raise ConfigError(f"{what} k={k} must be between 1 and the corpus size {num_videos}")


def _scores(vectors, q, offset, num_valid):
  """q [B, E] x local rows -> scores [B, Vs] with padding rows at -inf, and the rows' ids."""
  s = jnp.einsum("be,ve->bv", q, vectors.astype(q.dtype))
  ids = offset + jnp.arange(vectors.shape[0])
  return jnp.where(ids[None, :] < num_valid, s, _NEG), ids


def _local_topk(s, ids, k):
  k_local = min(k, s.shape[1])
  top_s, top_i = jax.lax.top_k(s, k_local)
  return top_s, ids[top_i]


def _local_rank_parts(s, ids, gt):
  """Per shard: the ground truth's score (-inf if not here) and the count strictly ahead."""
  here = (gt >= ids[0]) & (gt <= ids[-1])
  local = jnp.clip(gt - ids[0], 0, ids.shape[0] - 1)
  gt_score = jnp.where(here, jnp.take_along_axis(s, local[:, None], 1)[:, 0], _NEG)
  return gt_score


def _count_ahead(s, ids, gt, gt_score):
  ahead = (s > gt_score[:, None]) | ((s == gt_score[:, None]) & (ids[None, :] < gt[:, None]))
  return jnp.sum(ahead & (ids[None, :] != gt[:, None]), axis=1)


@jax.tree_util.register_pytree_node_class
class ExactIndex:
  """Exact maximum inner product search on device."""

  def __init__(self, vectors: jax.Array, num_valid: int, mesh: Mesh | None = None):
    self.vectors = vectors          # [V_padded, E]; rows >= num_valid are padding
    self.num_valid = num_valid
    self.mesh = mesh                # rows split over the mesh's 'corpus' axis when given

  @classmethod
  def build(cls, vectors, mesh: Mesh | None = None) -> "ExactIndex":
    """On a mesh with a 'corpus' axis > 1 the rows are split over it (padded to a multiple);
    else the vectors are one array (replicated over a mesh's devices)."""
    n = vectors.shape[0]
    if sharding.size(mesh, sharding.CORPUS) > 1:
      sharding.check_corpus(mesh, n, "index")
      return cls(sharding.put_corpus(vectors, mesh), n, mesh)
    return cls(sharding.put_corpus(vectors, mesh), n, None)

  def tree_flatten(self):
    return (self.vectors,), (self.num_valid, self.mesh)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], *aux)

  @property
  def size(self) -> int:
    return self.num_valid

  def _run(self, q, k, gt):
    """Flattens leading dims; runs per corpus shard (shard_map) or on one array."""
    lead = q.shape[:-1]
    q2 = q.reshape(-1, q.shape[-1])
    gt2 = None if gt is None else gt.reshape(-1).astype(jnp.int32)
    if self.mesh is None:
      s, ids = _scores(self.vectors, q2, 0, self.num_valid)
      top_s, top_i = _local_topk(s, ids, k)
      rank = None
      if gt2 is not None:
        rank = 1 + _count_ahead(s, ids, gt2, _local_rank_parts(s, ids, gt2))
    else:
      axis = sharding.CORPUS
      shard_rows = self.vectors.shape[0] // sharding.size(self.mesh, axis)
      num_valid = self.num_valid

      def per_shard(vectors, q_part, gt_part):
        # This device's queries (its slice of 'data') against its rows of the corpus; the
        # corpus shards' candidates are merged over 'corpus' only.
        offset = jax.lax.axis_index(axis) * shard_rows
        s, ids = _scores(vectors, q_part, offset, num_valid)
        top_s, top_i = _local_topk(s, ids, k)
        all_s = jax.lax.all_gather(top_s, axis, axis=1, tiled=True)
        all_i = jax.lax.all_gather(top_i, axis, axis=1, tiled=True)
        best_s, pos = jax.lax.top_k(all_s, k)
        best_i = jnp.take_along_axis(all_i, pos, 1)
        if gt_part is None:
          return best_s, best_i, jnp.zeros(q_part.shape[0], jnp.int32)
        gt_score = jax.lax.pmax(_local_rank_parts(s, ids, gt_part), axis)
        ahead = jax.lax.psum(_count_ahead(s, ids, gt_part, gt_score), axis)
        return best_s, best_i, 1 + ahead

      rows = sharding.rows_spec(q2.shape[0], self.mesh)
      g = gt2 if gt2 is not None else jnp.zeros(q2.shape[0], jnp.int32)
      fn = jax.shard_map(
          lambda v, qq, gg: per_shard(v, qq, gg if gt2 is not None else None),
          mesh=self.mesh, in_specs=(P(axis), rows, rows), out_specs=(rows, rows, rows),
          check_vma=False)
      top_s, top_i, rank = fn(self.vectors, q2, g)
      rank = rank if gt2 is not None else None
    top_s = top_s.reshape(*lead, k)
    top_i = top_i.reshape(*lead, k).astype(jnp.int32)
    if rank is not None:
      rank = rank.reshape(lead).astype(jnp.int32)
    return top_s, top_i, rank

  def search(self, q, k):
    top_s, top_i, _ = self._run(q, k, None)
    return top_s, top_i

  def search_and_rank(self, q, k, gt):
    return self._run(q, k, gt)

  def rank(self, q, gt):
    """The exact rank of gt for each query (1 = top-1), without a top-k list."""
    return self._run(q, 1, gt)[2]


# ----------------------------------------------------------------------------- ScaNN

def _fingerprint(vectors: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(vectors, np.float32).tobytes()).hexdigest()


def scann_params(cfg, n: int) -> dict:
  """Resolved ScaNN parameters for a corpus of n vectors (cfg: config.index.scann)."""
  leaves = cfg.num_leaves or max(1, int(round(np.sqrt(n))))
  leaves = min(leaves, n)
  # ScaNN trains its tree on the sample: it needs a point per leaf (and 16 for hashing).
  sample = min(n, max(cfg.training_sample_size, leaves, 16))
  if sample > cfg.training_sample_size:
    logging.warning("index.scann.training_sample_size=%d is less than the %d leaves of %d "
                    "vectors: %d sampled instead", cfg.training_sample_size, leaves, n, sample)
  return {
      "num_leaves": leaves,
      "num_leaves_to_search": min(leaves, cfg.num_leaves_to_search or max(1, leaves // 10)),
      "training_sample_size": sample,
      "dims_per_block": cfg.dims_per_block,
      "anisotropic_quantization_threshold": cfg.anisotropic_quantization_threshold,
      "reorder": cfg.reorder,
  }


def _import_scann():
  """ScaNN, imported where it is used (a host-only dependency with Linux wheels only)."""
  try:
    import scann   # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError("config.index.backend='scann' needs the scann package (wheels for Linux "
                      "x86-64 / aarch64 only): pip install scann, or use "
                      "config.index.backend='exact'") from e
  return scann


def build_scann(vectors: np.ndarray, params: dict, threads: int = 0):
  scann = _import_scann()
  vectors = np.ascontiguousarray(vectors, np.float32)
  builder = scann.scann_ops_pybind.builder(vectors, 10, "dot_product")
  if params.get("brute_force"):
    return builder.score_brute_force().build()
  builder = builder.tree(num_leaves=params["num_leaves"],
                         num_leaves_to_search=params["num_leaves_to_search"],
                         training_sample_size=params["training_sample_size"])
  builder = builder.score_ah(
      params["dims_per_block"],
      anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"])
  builder = builder.reorder(params["reorder"])
  builder.set_n_training_threads(threads or os.cpu_count())
  return builder.build()


class _Host:
  """One ScaNN searcher over one corpus shard's rows (ids local to the shard)."""

  def __init__(self, searcher, num_vectors: int, *, threads: int, reorder: int):
    self.searcher, self.num_vectors, self.reorder = searcher, num_vectors, reorder
    if threads:
      searcher.set_num_threads(threads)

  def search(self, q: np.ndarray, depth: int):
    q = np.ascontiguousarray(q, np.float32)
    if q.shape[0] == 0:
      return np.zeros((0, depth), np.float32), np.zeros((0, depth), np.int32)
    want = min(depth, self.num_vectors)
    ids, scores = self.searcher.search_batched_parallel(
        q, final_num_neighbors=want, pre_reorder_num_neighbors=max(want, self.reorder))
    scores = np.asarray(scores, np.float32)
    ids = np.asarray(ids, np.int64).astype(np.int32)
    # When the searched leaves hold fewer than `want` points, ScaNN pads with id 0 and NaN.
    pad = ~np.isfinite(scores)
    out_s = np.full((q.shape[0], depth), -np.inf, np.float32)
    out_i = np.full((q.shape[0], depth), -1, np.int32)
    out_s[:, :want] = np.where(pad, -np.inf, scores)
    out_i[:, :want] = np.where(pad, -1, ids)
    return out_s, out_i


class _Searchers:
  """This process's searchers, one per corpus shard it holds (shard -> _Host, None for a shard
  of padding only). Compared by identity, so jit caches per index."""

  def __init__(self, hosts_by_shard: dict, shard_rows: int, num_vectors: int, depth: int):
    self.by_shard, self.shard_rows = hosts_by_shard, shard_rows
    self.num_vectors, self.depth = num_vectors, depth

  def search(self, shard: int, q: np.ndarray, depth: int):
    """q [n, E] -> scores, global ids [n, depth] of this shard's best (id -1 / -inf: none)."""
    if shard not in self.by_shard:
      raise RuntimeError(f"ScaNN: corpus shard {shard} has no searcher in this process "
                         f"(it holds {sorted(self.by_shard)})")
    host = self.by_shard[shard]
    if host is None:
      return (np.full((q.shape[0], depth), -np.inf, np.float32),
              np.full((q.shape[0], depth), -1, np.int32))
    scores, ids = host.search(q, depth)
    return scores, np.where(ids >= 0, ids + shard * self.shard_rows, -1).astype(np.int32)


# How a ground truth outside ScaNN's searched list is ranked (config.index.scann.beyond):
# 'exact' counts its exact rank on the device (an ExactIndex over the same vectors, split over
# the mesh's 'corpus' axis: O(V) device work per query); 'bound' reports it as the list's depth
# + 1 without looking (no O(V) work anywhere: mrr and mean_rank become bounds, R@k for k up to
# the depth is that of the searched list; metrics.json says so).
SCANN_BEYOND = ("exact", "bound")


@jax.tree_util.register_pytree_node_class
class ScannIndex:
  """One ScaNN searcher per corpus shard on the host of the devices that hold the shard,
  called from jitted code through jax.pure_callback (inside shard_map on a mesh: each device
  asks its own shard's searcher for its own queries) and merged over 'corpus' on the device.
  `exact` (the same vectors on the device, None under beyond='bound') ranks a ground truth
  beyond the merged list."""

  def __init__(self, searchers: _Searchers, exact: ExactIndex | None, mesh: Mesh | None):
    self.searchers, self.exact, self.mesh = searchers, exact, mesh

  def tree_flatten(self):
    return (self.exact,), (self.searchers, self.mesh)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(aux[0], children[0], aux[1])

  @property
  def size(self) -> int:
    return self.searchers.num_vectors

  @property
  def beyond_rank(self) -> int | None:
    """The rank reported for a ground truth beyond the list under beyond='bound', else None."""
    return None if self.exact is not None else self.searchers.depth + 1

  @classmethod
  def build(cls, vectors, cfg, *, directory: str | None = None, rank_depth: int = 100,
            mesh: Mesh | None = None) -> "ScannIndex":
    """One searcher per corpus shard held by this process (loaded from `directory`/shard_S_of_N
    if it matches, else built and saved). vectors: [V, E] (numpy, or a global array split over
    the mesh's 'corpus' axis: each process reads only its own shards' rows)."""
    beyond = cfg.get("beyond", "exact")
    if beyond not in SCANN_BEYOND:
      raise ConfigError(f"config.index.scann.beyond={beyond!r}: expected one of "
                        f"{', '.join(repr(b) for b in SCANN_BEYOND)}")
    device = ExactIndex.build(vectors, mesh)
    n = device.num_valid
    num_shards = sharding.size(mesh, sharding.CORPUS)
    shard_rows = device.vectors.shape[0] // num_shards
    depth = min(rank_depth, n)
    by_shard = {}
    for shard in device.vectors.addressable_shards:
      start = shard.index[0].start or 0
      s = start // shard_rows
      if s in by_shard:
        continue                                  # the same rows on another data replica
      rows = np.asarray(shard.data, np.float32)[:max(0, min(shard_rows, n - start))]
      name = f"shard_{s}_of_{num_shards}"
      # A shard held by several processes (data replicas across hosts) is kept in the workdir
      # by the first of them only; the others build it in memory (never read a folder that
      # another process may be replacing).
      keeps = directory and _first_holder(mesh, s) == jax.process_index()
      by_shard[s] = (_load_or_build(rows, cfg, os.path.join(directory, name) if keeps
                                    else None, name) if rows.shape[0] else None)
    searchers = _Searchers(by_shard, shard_rows, n, depth)
    return cls(searchers, device if beyond == "exact" else None, mesh)

  def _search(self, q, depth):
    """q [..., E] -> the merged list: scores, ids [..., depth] (best first)."""
    lead, e = q.shape[:-1], q.shape[-1]
    q2 = q.reshape(-1, e).astype(jnp.float32)
    searchers = self.searchers

    def host_fn(q_np, shard_np):
      # Under vmap the callback sees extra leading (batch) dims: flatten, answer, restore.
      batch = q_np.shape[:-1]
      shard = int(np.asarray(shard_np).reshape(-1)[0])
      scores, ids = searchers.search(shard, np.asarray(q_np).reshape(-1, e), depth)
      return scores.reshape(*batch, depth), ids.reshape(*batch, depth)

    def call(qq, shard):
      shapes = (jax.ShapeDtypeStruct((qq.shape[0], depth), jnp.float32),
                jax.ShapeDtypeStruct((qq.shape[0], depth), jnp.int32))
      return jax.pure_callback(host_fn, shapes, qq, shard, vmap_method="broadcast_all")

    if self.mesh is None:
      s, i = call(q2, jnp.zeros((), jnp.int32))
    else:
      axis = sharding.CORPUS

      def per_shard(qq):
        # This device's queries against its corpus shard's searcher; merged over 'corpus'.
        s, i = call(qq, jax.lax.axis_index(axis).astype(jnp.int32))
        all_s = jax.lax.all_gather(s, axis, axis=1, tiled=True)
        all_i = jax.lax.all_gather(i, axis, axis=1, tiled=True)
        best_s, pos = jax.lax.top_k(all_s, depth)
        return best_s, jnp.take_along_axis(all_i, pos, 1)

      rows = sharding.rows_spec(q2.shape[0], self.mesh)
      s, i = jax.shard_map(per_shard, mesh=self.mesh, in_specs=(rows,),
                           out_specs=(rows, rows), check_vma=False)(q2)
    return s.reshape(*lead, depth), i.reshape(*lead, depth)

  def _depth(self, k):
    return max(k, self.searchers.depth)

  def search(self, q, k):
    s, i = self._search(q, self._depth(k))
    return s[..., :k], i[..., :k]

  def search_and_rank(self, q, k, gt):
    s, i = self._search(q, self._depth(k))
    gt = gt.astype(jnp.int32)
    found = i == gt[..., None]
    in_list = jnp.where(found.any(-1), jnp.argmax(found, -1) + 1, 0)
    if self.exact is None:
      beyond = jnp.full_like(in_list, self._depth(k) + 1)
    else:
      # The exact rank, but at least one past the list's real entries.
      listed = jnp.sum(i >= 0, -1)
      beyond = jnp.maximum(listed + 1, self.exact.rank(q, gt))
    return s[..., :k], i[..., :k], jnp.where(in_list > 0, in_list, beyond).astype(jnp.int32)


def _first_holder(mesh: Mesh | None, shard: int) -> int:
  """The lowest process index among the devices that hold corpus shard `shard`."""
  if mesh is None:
    return jax.process_index()
  axis = mesh.axis_names.index(sharding.CORPUS)
  devices = np.take(mesh.devices, shard, axis=axis).ravel()
  return min(d.process_index for d in devices)


# Below this many rows a shard is searched by brute force (ScaNN's asymmetric hashing trains
# 16 centres per block and refuses fewer points).
_MIN_HASHED = 16


def _load_or_build(rows: np.ndarray, cfg, directory: str | None, name: str) -> _Host:
  scann = _import_scann()
  params = scann_params(cfg, rows.shape[0])
  if rows.shape[0] < _MIN_HASHED:
    params = {"brute_force": True}
  meta = {"params": params, "num_vectors": int(rows.shape[0]),
          "fingerprint": _fingerprint(rows)}
  searcher = None
  if directory and os.path.isfile(os.path.join(directory, "vsr_meta.json")):
    with open(os.path.join(directory, "vsr_meta.json")) as f:
      saved = json.load(f)
    if saved == meta:
      searcher = scann.scann_ops_pybind.load_searcher(directory)
      logging.info("ScaNN index (%s) loaded from %s", name, directory)
    else:
      logging.info("ScaNN index in %s is for other vectors or parameters; rebuilding",
                   directory)
  if searcher is None:
    start = time.perf_counter()
    searcher = build_scann(rows, params, cfg.threads)
    logging.info("ScaNN index (%s) built over %d vectors in %.1fs (%s)", name, rows.shape[0],
                 time.perf_counter() - start, params)
    if directory:
      save_scann(searcher, directory, meta)
  return _Host(searcher, rows.shape[0], threads=cfg.threads,
               reorder=params.get("reorder", 0))


def save_scann(searcher, directory: str, meta: dict) -> None:
  """Serialises into a temporary directory, then renames: never a half-written index."""
  tmp = f"{directory.rstrip('/')}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  searcher.serialize(tmp, relative_path=True)
  with open(os.path.join(tmp, "vsr_meta.json"), "w") as f:
    json.dump(meta, f)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)


def index_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(directory) for f in files)


# Index backends by name (config.index.backend): build(config, vectors [V, E], mesh, directory)
# -> an index pytree answering search / search_and_rank (module docstring). directory: where a
# backend may keep what it built (<workdir>/index/<backend>).
@registry.INDEX_BACKENDS.register("exact")
def _build_exact(config, vectors, mesh, directory):
  del directory
  del config
  return ExactIndex.build(vectors, mesh)


@registry.INDEX_BACKENDS.register("scann")
def _build_scann(config, vectors, mesh, directory):
  # Lists at least as deep as evaluation's TVR top-k: one depth, one rank past the list.
  return ScannIndex.build(vectors, config.index.scann, directory=directory, mesh=mesh,
                          rank_depth=max(100, config.eval.tvr_top_k))


def build_index(config, vectors, *, mesh: Mesh | None = None, directory: str | None = None):
  """The index backend named by config.index.backend over `vectors` [V, E]."""
  build = registry.INDEX_BACKENDS.get(config.index.backend, "index.backend")
  return build(config, vectors, mesh, directory)
