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

import hashlib
import json
import os

import jax
import numpy as np
from absl import logging

from vsr_jax import config_lib, hosts
from vsr_jax.engine import towers
from vsr_jax.progress import Progress


class QueryCacheError(config_lib.InputError):
  """A cache file made for another text tower; the message names it."""


def frozen_text(engine) -> bool:
  """Whether the engine's text tower is a frozen pretrained encoder with a pooled output."""
  return hasattr(engine.text, "pooled") and hasattr(engine.text, "project")


def fingerprint(engine, text_params) -> str:
  """A digest of what the pooled output depends on: the frozen weights and the tower's shape
  (max_len, num_slots: the template the queries are pooled in)."""
  h = hashlib.sha1()
  t = engine.text
  h.update(json.dumps([type(t).__name__, t.max_len, t.num_slots, t.cls_id, t.sep_id,
                       t.mask_id]).encode())
  frozen = text_params[towers.FROZEN]
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
  """[Q, E] query vectors from pooled encodings: the engine's current projection, batched."""
  return np.concatenate([np.asarray(hosts.fetch(project(engine, params, pooled[i:i + batch])))
                         for i in range(0, len(pooled), batch)])


def _encode(engine, params, tokens: np.ndarray, batch: int, name: str,
            every_seconds: float) -> np.ndarray:
  out = []
  progress = Progress(name, len(tokens), "queries", every_seconds)
  for i in range(0, len(tokens), batch):
    part = tokens[i:i + batch]
    real = len(part)
    if real < batch:      # one compiled shape
      part = np.concatenate([part, np.repeat(part[-1:], batch - real, 0)])
    out.append(np.asarray(hosts.fetch(_pooled(engine, params, part)))[:real])
    progress.update(i + real)
  return np.concatenate(out).astype(np.float32)


def pooled_queries(engine, params, tokens: np.ndarray, workdir: str, split: str, *,
                   batch: int, every_seconds: float = 10.0) -> np.ndarray:
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
  pooled = _encode(engine, params, tokens, batch, f"encode {split} queries (frozen tower, "
                   "once)", every_seconds)
  if hosts.is_primary():
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, pooled)
    os.replace(tmp, path)
    tmp = f"{meta_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"tower": fp, "tokens": tokens_digest, "hidden": int(pooled.shape[1])}, f)
    os.replace(tmp, meta_path)
  return pooled
