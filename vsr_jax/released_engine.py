"""Method-row kind 'released_engine': the reference's own engine, from its released embeddings.

The row ranks the eval split's corpus by the inner product of the released query and video
embeddings (config.data.reference_dir, read by vsr_jax/data/reference.py; rows L2-normalised as
the reference's evaluator does) with an exact index, whatever index.backend says (the
reference's FAISS IndexFlatIP is exact), and reports what an 'engine' row reports: VR R@k, MRR
and mean rank are the reference engine's single-shot retrieval numbers. The release has no
frame features to ground with, so every listed video's span is the whole video (as
eval.grounding='whole_video'): the row's VCMR columns are those of an engine that does not
ground.

It reads no trained stage and no features, so it runs with config.stages=() too:

  eval.rows.released_engine = dict(kind='released_engine', stage='', turns=0, refine='')
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from vsr_jax import evaluate, hosts, registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import reference
from vsr_jax.engine import index as index_lib


@functools.partial(jax.jit, static_argnames="k")
def _search_and_rank(index, q, gt, *, k: int):
  return index.search_and_rank(q, k, gt)


def released_row(config, split, videos: np.ndarray, queries: np.ndarray, *,
                 name: str = "released_engine", mesh=None) -> evaluate.RowResult:
  """The single-shot row of given embeddings: videos [V, D] in split.video_ids' order,
  queries [Q, D] in split.desc_ids' order."""
  V, Q = split.num_videos, split.num_queries
  if videos.shape[0] != V or queries.shape[0] != Q:
    raise ValueError(f"released_row: {videos.shape[0]} videos and {queries.shape[0]} queries "
                     f"for a split of {V} videos and {Q} queries")
  k = min(config.eval.tvr_top_k, V)
  index = index_lib.ExactIndex.build(videos, mesh)
  scores, ids = np.zeros((Q, k), np.float32), np.zeros((Q, k), np.int32)
  ranks = np.zeros(Q, np.int32)
  batch = config.eval.batch_size
  for start in range(0, Q, batch):
    sl = slice(start, start + batch)
    scores[sl], ids[sl], ranks[sl] = hosts.fetch(
        _search_and_rank(index, queries[sl], split.video_index[sl], k=k))
  # No frames to ground with: each listed video's span is the whole video.
  spans = np.stack([np.zeros((Q, k), np.float32), split.durations[ids]], -1)
  vcmr = [np.column_stack([ids[i], spans[i], scores[i]]) for i in range(Q)]
  gt = split.video_index
  gt_scores = np.einsum("qd,qd->q", queries, videos[gt])
  svmr = [np.array([[gt[i], 0.0, split.durations[gt[i]], gt_scores[i]]]) for i in range(Q)]
  turn = evaluate.Turn(rank=ranks, policy_rank=ranks, retrieved=ids[:, 0],
                       answer=np.ones(Q, bool), pred_time=spans[:, 0])
  return evaluate.RowResult(name=name, orig_rank=ranks, turns=[turn], vcmr=vcmr, svmr=svmr,
                            vr=vcmr)


def _evaluate(ctx, name, row, split, corpus):
  del row, corpus      # no trained stage, not the engine's index
  videos, queries = reference.released_embeddings(ctx.config.data.reference_dir, split)
  return released_row(ctx.config, split, videos, queries, name=name, mesh=ctx.mesh)


def _check(config, name: str) -> None:
  if not config.data.reference_dir:
    raise ConfigError(f"config.eval.rows.{name}.kind='released_engine' reads the reference's "
                      "released embeddings: expected config.data.reference_dir to name their "
                      "folder")


registry.ROW_KINDS.register("released_engine", evaluate.RowKind(
    _evaluate, stage="", corpus=False, check=_check))
