"""ScaNN vs exact search on the frozen engine's vectors of a large synthetic corpus.

  python experiments/scann_benchmark.py --workdir=runs/demo [--num_videos=1000000]

Streams `num_videos` synthetic videos (the test split's stream, in bounded memory: frame
features are generated chunk by chunk and only the engine's video vectors are kept) through
the trained engine of `--workdir`, encodes test queries, then searches them with the exact
backend (jitted matmul + lax.top_k) and the ScaNN backend (through jax.pure_callback), both
through vsr_jax's index interface, side by side in this process. Prints recall@k of ScaNN
against exact, both throughputs, their ratio, the ScaNN build time and index bytes per vector.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from vsr_jax import stages
from vsr_jax.data import sources
from vsr_jax import workdir as workdir_lib
from vsr_jax.data import store, synthetic
from vsr_jax.engine import encode, index as index_lib, towers

flags.DEFINE_string("workdir", "runs/demo", "A trained run (make demo) whose engine to use.")
flags.DEFINE_integer("num_videos", 1_000_000, "Corpus size.")
flags.DEFINE_integer("num_queries", 2048, "Queries to search with.")
flags.DEFINE_integer("k", 10, "Neighbours per query (recall@k).")
flags.DEFINE_integer("batch", 256, "Queries per search call.")
flags.DEFINE_integer("num_leaves", 2000, "ScaNN tree leaves.")
flags.DEFINE_integer("leaves_to_search", 80, "ScaNN leaves searched per query.")
flags.DEFINE_integer("reorder", 100, "ScaNN candidates re-scored exactly.")
flags.DEFINE_integer("dims_per_block", 2, "ScaNN asymmetric-hashing dimensions per block.")
flags.DEFINE_string("cache", "", "Where to keep the corpus vectors between runs "
                    "(default: <workdir>/bench).")
FLAGS = flags.FLAGS


def corpus_vectors(config, engine, params, tokenizer, num_videos: int, cache_dir: str):
  """Video vectors [N, E] and a sample of query tokens/ground truths, cached on disk."""
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, f"corpus_{num_videos}.npz")
  if os.path.exists(path):
    data = np.load(path)
    logging.info("corpus vectors loaded from %s", path)
    return data["vectors"], data["tokens"], data["gt"]
  cfg = config.data.synthetic.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.chunk_videos = 2048
  world = synthetic.make_world(cfg, config.data.feature_dim)
  F, D = config.data.max_frames, config.data.feature_dim
  vectors = np.zeros((num_videos, config.engine.embed_dim), np.float32)
  queries, gts = [], []
  done, start = 0, time.perf_counter()
  for chunk in synthetic.iter_chunks(cfg, split="test", num_videos=num_videos, world=world,
                                     feature_dim=D, max_frames=F):
    n = len(chunk.videos)
    feats = np.zeros((n, F, D), np.float32)
    lengths = np.zeros(n, np.int32)
    for i, f in enumerate(chunk.features):
      feats[i, :len(f)] = f
      lengths[i] = len(f)
    vectors[done:done + n] = encode.encode_videos(engine, params, feats, lengths, 512)
    first = {v.video_id: done + i for i, v in enumerate(chunk.videos)}
    for row in chunk.annotations[:4]:    # a few queries from every chunk
      queries.append(row["fig_desc"])
      gts.append(first[row["video"]])
    done += n
    rate = done / (time.perf_counter() - start)
    logging.info("corpus: %d/%d videos (%.0f/s, ETA %.0fs)", done, num_videos, rate,
                 (num_videos - done) / rate)
  tokens, _, _ = tokenizer.encode(queries, config.data.max_query_len)
  np.savez(path, vectors=vectors, tokens=tokens, gt=np.array(gts, np.int32))
  return vectors, tokens, np.array(gts, np.int32)


def timed_search(index, queries: np.ndarray, k: int, batch: int):
  """Ids [Q, k] and queries per second (after one warm-up call that compiles)."""
  search = jax.jit(lambda ix, q: ix.search(q, k)[1])
  jax.block_until_ready(search(index, queries[:batch]))
  start = time.perf_counter()
  ids = [np.asarray(search(index, queries[i:i + batch])) for i in range(0, len(queries), batch)]
  seconds = time.perf_counter() - start
  return np.concatenate(ids), len(queries) / seconds


def main(_):
  logging.get_absl_handler().addFilter(
      type("Quiet", (), {"filter": staticmethod(lambda r: r.levelno >= 30 or "/orbax/" not in
                                                r.pathname)})())
  config = workdir_lib.read_config(FLAGS.workdir)
  tokenizer = store.load_tokenizer(sources.data_dir(config, FLAGS.workdir),
                                   config.data.train_split)
  engine = towers.build_engine(config, len(tokenizer))
  params = stages.load_params(config, FLAGS.workdir, "engine")
  vectors, tokens, gt = corpus_vectors(config, engine, params, tokenizer, FLAGS.num_videos,
                                       FLAGS.cache or os.path.join(FLAGS.workdir, "bench"))
  rng = np.random.default_rng(0)
  pick = rng.choice(len(tokens), size=min(FLAGS.num_queries, len(tokens)), replace=False)
  queries = encode.encode_queries(engine, params, tokens[pick], 256)
  n, dim = vectors.shape

  exact = index_lib.ExactIndex.build(vectors)
  exact_ids, exact_qps = timed_search(exact, queries, FLAGS.k, FLAGS.batch)

  scann_cfg = config.index.scann.copy_and_resolve_references()
  with scann_cfg.unlocked():
    scann_cfg.num_leaves = FLAGS.num_leaves
    scann_cfg.num_leaves_to_search = FLAGS.leaves_to_search
    scann_cfg.reorder = FLAGS.reorder
    scann_cfg.dims_per_block = FLAGS.dims_per_block
    scann_cfg.training_sample_size = min(n, 250_000)
  directory = os.path.join(FLAGS.cache or os.path.join(FLAGS.workdir, "bench"),
                           f"scann_{n}")
  if os.path.isdir(directory):
    import shutil
    shutil.rmtree(directory)          # measure a real build
  start = time.perf_counter()
  scann_index = index_lib.ScannIndex.build(vectors, scann_cfg, directory=directory)
  build_seconds = time.perf_counter() - start
  scann_ids, scann_qps = timed_search(scann_index, queries, FLAGS.k, FLAGS.batch)

  recall = np.mean([len(set(a) & set(b)) / FLAGS.k for a, b in zip(exact_ids, scann_ids)])
  gt_found_exact = np.mean(exact_ids[:, 0] == gt[pick])
  print(f"corpus {n} x {dim} (engine vectors), {len(queries)} queries, k={FLAGS.k}")
  print(f"exact  (jit matmul + top_k): {exact_qps:10.1f} queries/s")
  print(f"scann  ({FLAGS.num_leaves} leaves, search {FLAGS.leaves_to_search}, AH "
        f"{FLAGS.dims_per_block}-d blocks, reorder {FLAGS.reorder}): {scann_qps:10.1f} queries/s")
  print(f"ratio scann/exact: {scann_qps / exact_qps:.1f}x")
  print(f"recall@{FLAGS.k} of scann vs exact: {recall:.4f}")
  print(f"scann build time: {build_seconds:.1f}s; index size "
        f"{index_lib.index_bytes(directory) / n:.1f} bytes/vector "
        f"(float32 vectors alone: {4 * dim} bytes/vector)")
  print(f"(engine R@1 of these queries over the {n}-video corpus: {gt_found_exact:.3f})")


if __name__ == "__main__":
  app.run(main)
