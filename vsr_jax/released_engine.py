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

Kind 'released_index': the same released video vectors as the index, searched with the query
vectors of this run's own text tower as loaded (its `sentence_embedding`: for
engine.text.kind='qwen3' the embedding model's last-token vector, no projection), i.e. our
Flax text path of their embedding model against their index. With the real
Qwen3-VL-Embedding-2B weights in engine.text.pretrained_dir its numbers should equal
released_engine's; the log reports the cosine between our query vectors and theirs.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from absl import logging

from vsr_jax import evaluate, hosts, registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import reference
from vsr_jax.engine import index as index_lib, towers


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
  if config.data.source != "reference":
    raise ConfigError(f"config.eval.rows.{name}: a released-embedding row reads the split of "
                      "the reference's release: expected config.data.source='reference', not "
                      f"{config.data.source!r}")
  if not config.data.reference_dir:
    raise ConfigError(f"config.eval.rows.{name}: a released-embedding row reads the reference's "
                      "released embeddings: expected config.data.reference_dir to name their "
                      "folder")


def own_query_vectors(ctx, split) -> np.ndarray:
  """[Q, hidden] L2-normalised query vectors of the run's text tower as loaded (no stage)."""
  engine, config = ctx.engine, ctx.config
  if not hasattr(engine.text, "sentence_embedding"):
    raise ConfigError(f"config.engine.text.kind={config.engine.text.kind!r} has no pretrained "
                      "query vector of its own: a 'released_index' row needs a pretrained "
                      "text tower (qwen3, minilm)")
  params = towers.init_engine(engine, config, jax.random.key(config.seed))
  encode = jax.jit(lambda p, t: engine.apply(
      {"params": p}, t, method=lambda m, t: m.text.sentence_embedding(t)))
  batch = config.eval.batch_size
  out = []
  for start in range(0, split.num_queries, batch):
    tokens = split.tokens[start:start + batch]
    padded = np.zeros((batch,) + tokens.shape[1:], tokens.dtype)
    padded[:len(tokens)] = tokens
    out.append(np.asarray(hosts.fetch(encode(params, padded)))[:len(tokens)])
  return np.concatenate(out) if out else np.zeros((0, engine.text.width), np.float32)


def _evaluate_own_queries(ctx, name, row, split, corpus):
  del row, corpus
  videos, released = reference.released_embeddings(ctx.config.data.reference_dir, split)
  queries = own_query_vectors(ctx, split)
  if queries.shape[1] != videos.shape[1]:
    raise ConfigError(f"eval.rows.{name}: the text tower's vectors are {queries.shape[1]}-d, "
                      f"the released video vectors {videos.shape[1]}-d: not the same model")
  agree = np.einsum("qd,qd->q", queries, released)
  logging.info("%s: cosine of our query vectors with the released ones: mean %.6f, min %.6f "
               "(%d queries)", name, agree.mean() if len(agree) else np.nan,
               agree.min() if len(agree) else np.nan, len(agree))
  return released_row(ctx.config, split, videos, queries, name=name, mesh=ctx.mesh)


registry.ROW_KINDS.register("released_engine", evaluate.RowKind(
    _evaluate, stage="", corpus=False, check=_check))
registry.ROW_KINDS.register("released_index", evaluate.RowKind(
    _evaluate_own_queries, stage="", corpus=False, check=_check))
