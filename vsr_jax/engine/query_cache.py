"""A frozen pretrained text tower's pooled query encodings, computed once per split and kept in
the workdir.

With engine.text.kind='minilm' only the projection on top of the frozen encoder trains, so the
encoder's pooled output for a split's queries never changes: hard-negative mining (every
`mine_every` steps of stage 0) reads it from here and applies the current projection, instead of
running every training query through the encoder again.

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
from vsr_jax.data import store
from vsr_jax.engine import encode, towers


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


def pooled_queries(engine, params, tokens: np.ndarray, workdir: str, split: str, *,
                   every_seconds: float = 10.0) -> np.ndarray:
  """[Q, hidden] pooled encodings of `tokens` (a split's queries), from the workdir's cache or
  computed and cached. params: the engine's ({'text': ...} at least)."""
  fp = fingerprint(engine, params["text"])
  tokens_digest = hashlib.sha1(np.ascontiguousarray(tokens).tobytes()
                               + str(tokens.shape).encode()).hexdigest()[:16]
  folder = os.path.join(workdir, "cache", "queries")
  path = os.path.join(folder, f"{split}.npy")
  meta_path = path[:-4] + ".json"
  if os.path.isfile(path) and os.path.isfile(meta_path):
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
    if meta.get("tower") != fp:
      raise QueryCacheError(
          f"{path}: query encodings of another text tower (fingerprint {meta.get('tower')}, "
          f"this run's {fp}); the workdir belongs to a run on that tower: use another workdir "
          "(or delete the file if the tower's files were replaced on purpose)")
    if meta.get("tokens") == tokens_digest:
      pooled = np.load(path, allow_pickle=False)
      if pooled.shape == (len(tokens), meta.get("hidden")):
        return pooled
    logging.info("%s: made for other query tokens (the data changed): encoding again", path)
  text = jax.device_put(params)
  pooled = encode.batched(lambda t: _pooled(engine, text, t), [tokens], BATCH,
                          f"encode {split} queries (frozen tower, once)", every_seconds)
  pooled = pooled.astype(np.float32)
  if hosts.is_primary():
    os.makedirs(folder, exist_ok=True)
    # The description goes first and comes back last: a kill in between leaves an array
    # without one, which is encoded again, never one described as something else.
    if os.path.exists(meta_path):
      os.remove(meta_path)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, pooled)
    os.replace(tmp, path)
    store.atomic_write_text(meta_path, json.dumps(
        {"tower": fp, "tokens": tokens_digest, "hidden": int(pooled.shape[1])}))
  return pooled
