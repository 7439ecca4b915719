"""Evaluation throughput and peak memory of the retrieval episode as the corpus grows, with the
exact index and with ScaNN.

  python experiments/scale_benchmark.py [--sizes=1000,10000,100000] [--backends=exact,scann,scann_bound] \
      [--config=configs/synthetic.py:smoke] [--queries=512] [--batch=128] \
      [--frame_store=device|host] [--store_dir=DIR] [--store_dtype=float32|float16]

Each (backend, corpus size) runs in its own process (so that its peak RSS is its own): an
untrained agent and engine initialised from the config (this measures cost, not accuracy), a
corpus of random frame features [V, max_frames, feature_dim] and random unit video vectors
[V, embed_dim] (the :smoke preset's 32 x 32 features and 32-d vectors by default), random
query tokens, and the fused greedy episode (vsr_jax.rollout.episode, eval.turns turns) over
`--queries` queries in batches of `--batch`, after one warm-up batch that compiles (the
fastest of `--repeats` timings).

--frame_store=host: the frames are written (in chunks, never whole in memory) to one .npy
file under --store_dir and the episode reads only the retrieved videos' rows from its memory
map (vsr_jax.rollout.HostFrames, eval.frame_store=host): memory stays bounded at any corpus
size; the table adds the file's size on disk.

Backend scann: ScaNN's rank of a ground truth outside its searched list is counted exactly on
the device (an ExactIndex over the same vectors, index.scann.beyond='exact'; an O(V) pass per
query); the host runs ScaNN's search only. scann_bound: the same searcher with
index.scann.beyond='bound' (such a ground truth is reported as rank 101, not counted: no O(V)
work anywhere). Each ScaNN backend is measured twice: with random ground truths (almost never in the list: the device count
decides nearly every rank; the untrained engine's worst case) and with each query's exact
top-1 as its ground truth (in the list unless ScaNN misses it or refinement moves the query
away).

Prints per backend and size: queries/s, seconds, ScaNN's build time, peak RSS, the growth of
the time per x10 videos, and whether "with ScaNN, evaluation time grows less than 10x when
the corpus grows 100x" holds. Memory: the corpus' features take V x max_frames x feature_dim
x 4 bytes (1e6 videos at the :smoke dims: 4.1 GB); measured on a CPU with the device store,
the peak RSS is about 0.7 GB + 1.8x the corpus (1e5 videos: 1.45 GB), so about 8 GB at 1e6;
use --frame_store=host there.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import types

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from vsr_jax import rollout
from vsr_jax.agent import policy
from vsr_jax.data import synthetic, tokenizer as tokenizer_lib
from vsr_jax.engine import encode, index as index_lib, towers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(REPO, "configs", "synthetic.py") + ":smoke",
    "Config file[:preset] of the agent, engine and feature sizes.")
flags.DEFINE_list("sizes", ["1000", "10000", "100000"], "Corpus sizes (videos).")
# scann_bound: ScaNN with index.scann.beyond='bound' (ranks past its list not counted).
BACKENDS = ("exact", "scann", "scann_bound")
flags.DEFINE_list("backends", ["exact", "scann", "scann_bound"],
                  "Index backends: " + " | ".join(BACKENDS) + ".")
flags.DEFINE_integer("queries", 512, "Queries per measurement.")
flags.DEFINE_integer("batch", 128, "Queries per episode call.")
flags.DEFINE_integer("repeats", 3, "Timings of the queries per point; the fastest counts "
                     "(a shared machine's noise only adds time).")
flags.DEFINE_integer("turns", 0, "Turns per episode (0: config.eval.turns).")
flags.DEFINE_integer("scann_sample", 100_000, "ScaNN's training sample (the :smoke preset's 64 "
                     "is for tests: too few points for sqrt(V) leaves).")
flags.DEFINE_integer("seed", 0, "Seed of the random corpus, queries and models.")
flags.DEFINE_enum("frame_store", "device", ["device", "host"], "Where the episode's frames "
                  "live: on the device, or in a memory-mapped file on disk (HostFrames).")
flags.DEFINE_string("store_dir", "", "--frame_store=host: the folder of the frame files "
                    "(default: a temporary folder, removed after each point).")
flags.DEFINE_enum("store_dtype", "float32", ["float32", "float16"], "--frame_store=host: the "
                  "frames' dtype on disk (float16 halves the file; read back as float32).")
flags.DEFINE_string("one", "", "Internal: 'backend:size' measures one point in this process "
                    "and prints it as JSON.")
FLAGS = flags.FLAGS

RANK_DEPTH = 100     # ScaNN's searched list for ranks (ScannIndex.build's default)


# ------------------------------------------------------------------ arithmetic (tested)

def growth_per_decade(sizes, seconds) -> list:
  """Time growth per x10 videos between consecutive sizes ([None] for the first)."""
  out = [None]
  for (n0, t0), (n1, t1) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:])):
    out.append((t1 / t0) ** (1.0 / math.log10(n1 / n0)))
  return out


def growth_checks(sizes, seconds, span: float = 100.0, limit: float = 10.0) -> list:
  """(n0, n1, t1 / t0, t1 / t0 < limit) for every pair of sizes n1 = span x n0."""
  by_size = dict(zip(sizes, seconds))
  return [(n0, n0 * span, by_size[n0 * span] / t0, by_size[n0 * span] / t0 < limit)
          for n0, t0 in by_size.items() if n0 * span in by_size]


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024    # KiB on Linux


# ------------------------------------------------------------------ one point (a child process)

def write_frames(path: str, size: int, F: int, D: int, dtype, rng, chunk: int = 4096):
  """Random frames [size, F, D] into an .npy file, written in chunks with plain file writes
  (a writable memory map would keep every written page resident), then memory-mapped."""
  header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": (size, F, D)}
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(f, header)
    for start in range(0, size, chunk):
      n = min(chunk, size - start)
      f.write(rng.standard_normal((n, F, D), dtype=np.float32).astype(dtype).tobytes())
  return np.load(path, mmap_mode="r")


def random_corpus(config, size: int, rng, store_path: str = ""):
  """Frame features, lengths and unit video vectors of `size` random videos; the features in
  memory, or (store_path) memory-mapped from a file written there."""
  F, D = config.data.max_frames, config.data.feature_dim
  if store_path:
    features = write_frames(store_path, size, F, D, np.dtype(FLAGS.store_dtype), rng)
  else:
    features = rng.standard_normal((size, F, D), dtype=np.float32)
  num_frames = rng.integers(min(config.data.synthetic.min_frames, F), F + 1, size)
  vectors = rng.standard_normal((size, config.engine.embed_dim), dtype=np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  split = types.SimpleNamespace(
      features=features, num_frames=num_frames.astype(np.int32),
      frame_seconds=np.ones(size, np.float32), durations=num_frames.astype(np.float32))
  return split, vectors


def random_tokens(config, vocab_size: int, n: int, rng) -> np.ndarray:
  L = config.data.max_query_len
  tokens = rng.integers(tokenizer_lib.UNK + 1, vocab_size, (n, L)).astype(np.int32)
  lengths = rng.integers(min(4, L), L + 1, n)
  tokens[np.arange(L)[None, :] >= lengths[:, None]] = tokenizer_lib.PAD
  return tokens


def exact_top1(queries: np.ndarray, vectors: np.ndarray, chunk: int = 256) -> np.ndarray:
  return np.concatenate([np.argmax(queries[i:i + chunk] @ vectors.T, 1)
                         for i in range(0, len(queries), chunk)]).astype(np.int32)


def measure_one(config, backend: str, size: int) -> dict:
  rng = np.random.default_rng(FLAGS.seed)
  tokenizer = towers.tokenizer_for(config) or tokenizer_lib.WordTokenizer(
      synthetic.vocabulary(config.data.synthetic))
  engine = towers.build_engine(config, len(tokenizer))
  engine_params = towers.init_engine(engine, config, jax.random.PRNGKey(FLAGS.seed))
  agent = policy.build_agent(config, len(tokenizer), config.agent.refine)
  params = policy.init_agent(agent, config, jax.random.PRNGKey(FLAGS.seed + 1),
                             engine_params if config.agent.engine_inputs else None)
  store_path = ""
  if FLAGS.frame_store == "host":
    folder = FLAGS.store_dir or tempfile.mkdtemp(prefix="vsr_scale_")
    os.makedirs(folder, exist_ok=True)
    store_path = os.path.join(folder, f"frames_{size}_{FLAGS.store_dtype}.npy")
  try:
    return _measure(config, backend, size, rng, engine, engine_params, agent, params,
                    len(tokenizer), store_path)
  finally:
    if store_path:
      os.remove(store_path)
      if not FLAGS.store_dir:
        os.rmdir(os.path.dirname(store_path))


def _measure(config, backend, size, rng, engine, engine_params, agent, params, vocab_size,
             store_path):
  start = time.perf_counter()
  split, vectors = random_corpus(config, size, rng, store_path)
  make_s = time.perf_counter() - start
  disk_mb = os.path.getsize(store_path) / 2 ** 20 if store_path else 0.0
  tokens = random_tokens(config, vocab_size, FLAGS.queries, rng)
  gts = {"random": rng.integers(0, size, FLAGS.queries).astype(np.int32)}
  if backend != "exact":
    queries = encode.encode_queries(engine, engine_params, tokens, FLAGS.batch)
    gts["top1"] = exact_top1(queries, vectors)

  start = time.perf_counter()
  if backend == "exact":
    index = index_lib.ExactIndex.build(vectors)
  else:
    cfg = config.index.scann.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.training_sample_size = FLAGS.scann_sample
      cfg.beyond = "bound" if backend == "scann_bound" else "exact"
    index = index_lib.ScannIndex.build(vectors, cfg, rank_depth=RANK_DEPTH)
  build = time.perf_counter() - start
  corpus = rollout.Corpus.from_split(index, split, frame_store=FLAGS.frame_store)
  in_memory = split.features.nbytes if FLAGS.frame_store == "device" else 0
  corpus_mb = (in_memory + vectors.nbytes) / 2 ** 20
  del split          # the device copy (or the memory map) is the corpus now

  spec = rollout.EpisodeConfig(turns=FLAGS.turns or config.eval.turns,
                               num_latents=config.agent.num_latents, refine=config.agent.refine,
                               sigma=config.agent.sigma, mode="greedy")
  fused = jax.jit(functools.partial(rollout.episode, agent, engine, spec=spec))
  key = jax.random.PRNGKey(FLAGS.seed)
  B = FLAGS.batch
  n = FLAGS.queries // B * B

  def run(gt, count):
    ranks = []
    for i in range(0, count, B):
      steps = fused(params, engine_params, corpus, tokens[i:i + B], gt[i:i + B], key)
      ranks.append(np.asarray(steps["rank"][0]))     # turn 1's rank (blocks on the call)
    return np.concatenate(ranks)

  modes = {}
  for mode, gt in gts.items():
    run(gt, B)                                       # compiles (once per backend)
    seconds = math.inf
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      ranks = run(gt, n)
      seconds = min(seconds, time.perf_counter() - start)
    modes[mode] = {"seconds": seconds, "qps": n / seconds,
                   # A rank past the list was counted on the device (turn 1's search).
                   "beyond_list": float(np.mean(ranks > RANK_DEPTH))}
  return {"backend": backend, "size": size, "queries": n, "build_s": build, "make_s": make_s,
          "corpus_mb": corpus_mb, "disk_mb": disk_mb, "peak_rss_mb": peak_rss_mb(),
          "modes": modes}


# ------------------------------------------------------------------ the table

def child_argv(backend: str, size: int) -> list[str]:
  passed = [a for a in sys.argv[1:] if not a.startswith("--one")]
  return [sys.executable, os.path.abspath(__file__), *passed, f"--one={backend}:{size}"]


def run_child(backend: str, size: int) -> dict:
  proc = subprocess.run(child_argv(backend, size), capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"{backend} at {size} videos failed (exit {proc.returncode})")
  return json.loads(lines[-1][len("RESULT "):])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  if FLAGS.one:
    backend, size = FLAGS.one.split(":")
    print("RESULT " + json.dumps(measure_one(config, backend, int(size))))
    return
  sizes = sorted(int(float(s)) for s in FLAGS.sizes)
  results = {}
  for backend in FLAGS.backends:
    if backend not in BACKENDS:
      raise app.UsageError(f"--backends: unknown {backend!r} ({' | '.join(BACKENDS)})")
    for size in sizes:
      logging.info("measuring %s at %d videos", backend, size)
      results[backend, size] = run_child(backend, size)
      logging.info("%s at %d videos: %s", backend, size, json.dumps(results[backend, size]))

  first = results[FLAGS.backends[0], sizes[0]]
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}); {first['queries']} queries "
        f"in batches of {FLAGS.batch}, {FLAGS.turns or config.eval.turns} turns, greedy; random "
        f"features [{config.data.max_frames}, {config.data.feature_dim}] per video, random "
        f"unit vectors of {config.engine.embed_dim} dims; untrained agent and engine; frame "
        f"store: {FLAGS.frame_store}"
        + (f" ({FLAGS.store_dtype} memory-mapped file)" if FLAGS.frame_store == "host" else ""))
  print("| backend | ground truths | videos | queries/s | seconds | x per 10x videos | "
        "build s | corpus MB in memory | frames MB on disk | peak RSS MB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for backend in FLAGS.backends:
    for mode in results[backend, sizes[0]]["modes"]:
      seconds = [results[backend, s]["modes"][mode]["seconds"] for s in sizes]
      for size, growth in zip(sizes, growth_per_decade(sizes, seconds)):
        r = results[backend, size]
        m = r["modes"][mode]
        print(f"| {backend} | {mode} | {size} | {m['qps']:.1f} | {m['seconds']:.2f} | "
              f"{'' if growth is None else f'{growth:.2f}x'} | {r['build_s']:.1f} | "
              f"{r['corpus_mb']:.0f} | {r['disk_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
  for backend in (b for b in FLAGS.backends if b != "exact"):
    how = ("ranked by the device's exact count" if backend == "scann" else
           f"reported as rank {RANK_DEPTH + 1} (not counted)")
    print()
    for size in sizes:
      modes = results[backend, size]["modes"]
      r, t = modes["random"], modes["top1"]
      print(f"{backend} at {size} videos: turn-1 ground truths past the list "
            f"{100 * r['beyond_list']:.0f}% (random) vs {100 * t['beyond_list']:.0f}% (exact "
            f"top-1), {how}; random ground truths take "
            f"{r['seconds'] / t['seconds']:.2f}x the time of top-1 ones")
    for mode in results[backend, sizes[0]]["modes"]:
      seconds = [results[backend, s]["modes"][mode]["seconds"] for s in sizes]
      checks = growth_checks(sizes, seconds)
      for n0, n1, ratio, holds in checks:
        print(f"with {backend} ({mode} ground truths), evaluation time grows less than 10x "
              f"when the corpus grows 100x ({n0} -> {int(n1)} videos: {ratio:.2f}x): "
              f"{'holds' if holds else 'does not hold'}")
      if not checks:
        print("no two sizes 100x apart: the 10x-per-100x claim is not checked")


if __name__ == "__main__":
  app.run(main)
