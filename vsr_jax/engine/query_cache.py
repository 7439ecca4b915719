"""A frozen pretrained text tower's pooled query encodings, computed once per split and kept in
the workdir.

With engine.text.kind='minilm' only the projection on top of the frozen encoder trains, so the
encoder's pooled output for a split's queries never changes: hard-negative mining (every
`mine_every` steps of stage 0) reads it from here and applies the current projection, instead of
running every training query through the encoder again.

With `engine.train.caption_variants` > 0, stage 0's captions are cached too: that many draws
of each caption's fine_keep variant (<split>.captions<k>.npy), encoded once instead of a fresh
draw through the encoder at every step. Evaluation reads a split's file when training made one
(never writes one). Encodings are made by length: batches cut to their longest query.

A cache file <workdir>/cache/queries/<split>.npy is [Q, hidden] float32, beside a .json that
records the tower's fingerprint (a digest of the frozen weights, the tower's shape fields) and
the digest of the token ids it encoded. Other tokens (the data changed): encoded again, logged.
Another tower's fingerprint: a one-line error naming the file and both fingerprints (the
workdir's engine was trained on the other tower; nothing of this run would fit it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np
from absl import logging

from vsr_jax import config_lib, hosts
from vsr_jax.data import batching, store
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine import encode, towers
from vsr_jax.progress import Progress


class QueryCacheError(config_lib.InputError):
  """A cache file made for another text tower; the message names it."""


def frozen_text(engine) -> bool:
  """Whether the engine's text tower is a frozen pretrained encoder with a pooled output."""
  return hasattr(engine.text, "pooled") and hasattr(engine.text, "project")


# Bumped when the pooling code changes what a cached encoding holds.
VERSION = 1
# Encodings are made in batches of this size whatever the config's batch sizes: a query's
# vector is then the same bits in every run and process that computes it.
BATCH = 256
# ... and cut to the batch's longest query rounded up to a multiple of this (encode_pooled).
TOKEN_MULTIPLE = 8


def fingerprint(engine, text_params) -> str:
  """A digest of what the pooled output depends on besides the tokens: the encoder's
  architecture and frozen weights, the query template (slots, special ids), the pooling code's
  version."""
  h = hashlib.sha1()
  t = engine.text
  h.update(json.dumps([VERSION, type(t).__name__, dataclasses.asdict(t.arch),
                       *t.template_key()], sort_keys=True).encode())
  frozen = next(text_params[k] for k in towers.FROZEN_KEYS if k in text_params)
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(frozen),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.asarray(hosts.fetch(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


# Module-level jits (the engine static): one compile per shape for the whole run.
_pooled = jax.jit(lambda engine, params, tokens: engine.apply(
    {"params": params}, tokens, method=towers.DualEncoder.text_pooled), static_argnums=0)
project = jax.jit(lambda engine, params, pooled: engine.apply(
    {"params": params}, pooled, method=towers.DualEncoder.text_from_pooled), static_argnums=0)


def project_all(engine, params, pooled: np.ndarray, batch: int) -> np.ndarray:
  """[Q, E] query vectors from pooled encodings: the engine's current projection, batched
  (the parameters placed once, not with every batch)."""
  params = jax.device_put(params)
  return encode.batched(lambda p: project(engine, params, p), [pooled], batch)


def query_vectors(engine, params, tokens: np.ndarray, batch: int, pooled=None) -> np.ndarray:
  """[Q, E] the engine's vectors of a split's queries: projected from `pooled` (this module's
  cache of a frozen tower) when given, else encoded from the tokens."""
  if pooled is None:
    return encode.encode_queries(engine, params, tokens, batch)
  return project_all(engine, params, pooled, batch)


def _files(workdir: str, split: str) -> tuple[str, str]:
  path = os.path.join(workdir, "cache", "queries", f"{split}.npy")
  return path, path[:-4] + ".json"


def _digest(tokens: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(tokens).tobytes()
                      + str(tokens.shape).encode()).hexdigest()[:16]


def cached(engine, params, tokens: np.ndarray, workdir: str, split: str):
  """[Q, hidden] the workdir's cached encodings of exactly these tokens, or None (no file, or
  one made for other tokens). A file of another tower: QueryCacheError."""
  path, meta_path = _files(workdir, split)
  if not (os.path.isfile(path) and os.path.isfile(meta_path)):
    return None
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  fp = fingerprint(engine, params["text"])
  if meta.get("tower") != fp:
    raise QueryCacheError(
        f"{path}: query encodings of another text tower (fingerprint {meta.get('tower')}, "
        f"this run's {fp}); the workdir belongs to a run on that tower: use another workdir "
        "(or delete the file if the tower's files were replaced on purpose)")
  if meta.get("tokens") == _digest(tokens):
    pooled = np.load(path, allow_pickle=False)
    if pooled.shape == (len(tokens), meta.get("hidden")):
      return pooled
  logging.info("%s: made for other query tokens (the data changed)", path)
  return None


def encode_pooled(engine, params, tokens: np.ndarray, name: str,
                  every_seconds: float = 10.0) -> np.ndarray:
  """[Q, hidden] float32 pooled encodings of `tokens`, by length: batches of BATCH rows taken
  shortest first, each cut to its longest row rounded up to TOKEN_MULTIPLE (the encoder's cost
  is its width; its output does not depend on padding: a few widths, a few compiles)."""
  text = jax.device_put(params)
  lengths = (tokens != PAD).sum(1)
  order = np.argsort(lengths, kind="stable")
  progress = Progress(name, len(tokens), "items", every_seconds)
  out = None
  for start in range(0, len(tokens), BATCH):
    rows = order[start:start + BATCH]
    width = max(TOKEN_MULTIPLE,
                -(-int(lengths[rows].max()) // TOKEN_MULTIPLE) * TOKEN_MULTIPLE)
    part = tokens[rows, :width]
    if len(rows) < BATCH:      # the last batch padded: one compile per width
      part = np.concatenate([part, np.repeat(part[-1:], BATCH - len(rows), 0)])
    vectors = hosts.fetch(_pooled(engine, text, part))[:len(rows)]
    if out is None:
      out = np.empty((len(tokens), vectors.shape[1]), np.float32)
    out[rows] = vectors
    progress.update(start + len(rows))
  return out


def pooled_queries(engine, params, tokens: np.ndarray, workdir: str, split: str, *,
                   every_seconds: float = 10.0, what: str = "queries") -> np.ndarray:
  """[Q, hidden] pooled encodings of `tokens` (a split's queries), from the workdir's cache or
  computed and cached. params: the engine's ({'text': ...} at least)."""
  pooled = cached(engine, params, tokens, workdir, split)
  if pooled is not None:
    return pooled
  pooled = encode_pooled(engine, params, tokens, f"encode {split} {what} (frozen tower, once)",
                         every_seconds)
  if hosts.is_primary():
    path, meta_path = _files(workdir, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # The description goes first and comes back last: a kill in between leaves an array
    # without one, which is encoded again, never one described as something else.
    if os.path.exists(meta_path):
      os.remove(meta_path)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, pooled)
    os.replace(tmp, path)
    store.atomic_write_text(meta_path, json.dumps(
        {"tower": fingerprint(engine, params["text"]), "tokens": _digest(tokens),
         "hidden": int(pooled.shape[1])}))
  return pooled


def caption_variants(engine, params, split, keep: float, count: int, seed: int, workdir: str,
                     split_name: str, *, every_seconds: float = 10.0) -> np.ndarray:
  """[count, Q, hidden] pooled encodings of `count` draws of the split's captions with each
  fine-grained token kept with probability `keep` (batching.drop_fine_tokens): stage 0's
  captions on a frozen tower, drawn and encoded once (each draw cached like the queries; a
  changed seed, keep or split is other tokens, so encoded again)."""
  out = []
  for k in range(count):
    rng = np.random.default_rng([seed, 23, k])
    tokens = batching.drop_fine_tokens(split.tokens, split.fine, keep, rng)
    out.append(pooled_queries(engine, params, tokens, workdir, f"{split_name}.captions{k}",
                              every_seconds=every_seconds,
                              what=f"captions, variant {k + 1}/{count}"))
  return np.stack(out)
