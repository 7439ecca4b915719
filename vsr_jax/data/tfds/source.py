"""data.source='tfds': build the dataset when it is missing, read it back with
`as_data_source` (random access) and turn each split into the project's `store.Split`, so
every later stage is the same as for the other sources.

The builder's config comes from the project config (data.tfds.*, data.feature_dim, data.fps);
what it was built with is stored in the dataset and checked on reuse.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from vsr_jax.data import annotations, store
from vsr_jax.data import tokenizer as tokenizer_lib
from vsr_jax.data.tfds import builder as builder_lib
from vsr_jax.data.tfds import tvr, verified
from vsr_jax.progress import Progress

BUILDERS = {"verified_fig": (verified.VerifiedFig, verified.VerifiedConfig),
            "tvr": (tvr.Tvr, tvr.TvrConfig)}


def make_builder(data_cfg, data_dir: str):
  """The TFDS builder data_cfg describes, its files under data_dir."""
  family, _, name = data_cfg.tfds.name.partition("/")
  if family not in BUILDERS:
    raise builder_lib.BuildError(f"data.tfds.name={data_cfg.tfds.name!r}: unknown builder "
                                 f"{family!r} (known: {', '.join(BUILDERS)})")
  cls, config_cls = BUILDERS[family]
  known = {c.name: c for c in cls.BUILDER_CONFIGS}
  if name not in known:
    raise builder_lib.BuildError(f"data.tfds.name={data_cfg.tfds.name!r}: unknown config "
                                 f"{name!r} (known: {', '.join(known)})")
  t = data_cfg.tfds
  fields = dict(fps=data_cfg.fps, feature_dim=data_cfg.feature_dim,
                video_features=t.video_features, query_features=t.query_features,
                query_feature_dim=t.query_feature_dim,
                allow_missing_videos=t.allow_missing_videos)
  config = dataclasses.replace(known[name], **fields)
  if config.settings() != known[name].settings():
    # TFDS wants a new name for changed settings: one per settings, so that builds with
    # different features never share a directory.
    digest = hashlib.sha1(json.dumps(config.settings(), sort_keys=True).encode()).hexdigest()
    config = dataclasses.replace(config, name=f"{name}-{digest[:10]}",
                                 description=f"{name} with {fields}")
  else:
    config = name
  return cls(config=config, data_dir=data_dir)


def prepare(data_cfg, data_dir: str):
  """The built dataset (built now when missing), checked against the config."""
  builder = make_builder(data_cfg, data_dir)
  where = os.fspath(builder.data_dir)
  if not builder.is_prepared():
    if not os.path.isdir(data_cfg.manual_dir):
      raise builder_lib.BuildError(
          f"data.manual_dir={data_cfg.manual_dir!r}: no such directory (the published "
          f"annotation and feature files of {data_cfg.tfds.name} go there; nothing is "
          "downloaded)")
    logging.info("building TFDS dataset %s from %s into %s", data_cfg.tfds.name,
                 data_cfg.manual_dir, where)
    tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir))
    return builder
  stored = dict(builder.info.metadata or {}).get("settings")
  wanted = builder.builder_config.settings()
  if stored != wanted:
    differ = sorted(k for k in set(wanted) | set(stored or {})
                    if (stored or {}).get(k) != wanted.get(k))
    raise builder_lib.BuildError(
        f"{where} was built with other settings ({', '.join(differ)} differ); delete it to "
        "rebuild, or use another data.dir")
  # A split file added after the build would otherwise be silently ignored.
  for split, name in builder.builder_config.annotations:
    path = os.path.join(data_cfg.manual_dir, name)
    if os.path.isfile(path) and split not in builder.info.splits:
      raise builder_lib.BuildError(
          f"{path} exists but the dataset at {where} was built without split {split!r}; "
          "delete it to rebuild")
  return builder


def read_split(builder, split: str, *, progress_seconds: float = 10.0):
  """-> (moments in annotation-file order, {video: features [T, D]}, query features or None)."""
  source = builder.as_data_source(split=split)
  entries, features, query_feats = [], {}, {}
  progress = Progress(f"read {split}", len(source), "videos", progress_seconds)
  for i in range(len(source)):
    ex = source[i]
    video = ex["video"].decode("utf-8")
    features[video] = ex["features"]
    q = ex["queries"]
    offsets = np.cumsum([0] + [int(n) for n in q.get("query_len", [])])
    for j in range(len(q["desc_id"])):
      m = annotations.Moment(int(q["desc_id"][j]), video, float(q["start"][j]),
                             float(q["end"][j]), float(ex["duration"]),
                             q["query"][j].decode("utf-8"), q["coarse"][j].decode("utf-8"))
      entries.append((int(q["row"][j]), m))
      if "query_features" in ex:
        query_feats[m.desc_id] = ex["query_features"][offsets[j]:offsets[j + 1]]
    progress.update(i + 1)
  entries.sort(key=lambda e: e[0])
  moments = [m for _, m in entries]
  return moments, features, (query_feats or None)


def load_data(config, data_dir: str, splits, *, tokenizer=None):
  """(tokenizer, {split: store.Split}) for data.source='tfds'.

  tokenizer: the engine's own (a pretrained text tower), or None: a word vocabulary of the
  train split. A dataset without the train split trains on the eval split, loudly.
  """
  d = config.data
  builder = prepare(d, data_dir)
  built = set(builder.info.splits)
  name_of = {}
  for split in set(splits) | {d.train_split}:
    name_of[split] = split
    if split not in built:
      if split == d.train_split and d.eval_split in built:
        logging.warning(
            "\n%s\n%s has no %r split: TRAINING ON THE %r ANNOTATIONS (a pipeline check, "
            "not a result)\n%s", "!" * 78, builder.data_dir, split, d.eval_split, "!" * 78)
        name_of[split] = d.eval_split
      else:
        raise builder_lib.BuildError(f"{builder.data_dir} has no split {split!r} "
                                     f"(it has {', '.join(sorted(built))})")
  cache = {}

  def get(split):
    if split not in cache:
      cache[split] = read_split(builder, split, progress_seconds=config.log.progress_seconds)
    return cache[split]

  if tokenizer is None:
    tokenizer = tokenizer_lib.WordTokenizer.build(m.query for m in get(name_of[d.train_split])[0])
  out, built_splits = {}, {}
  for split in splits:
    source = name_of[split]
    if source in built_splits:       # the train fallback: one Split object, not two copies
      out[split] = built_splits[source]
      continue
    moments, features, query_feats = get(source)
    counts = collections.Counter(builder.info.metadata["build"][source])
    split_obj = store.build_split(
        source, moments, features.__getitem__, d, tokenizer, fps=d.fps, counts=counts,
        where=f"{builder.data_dir} split {source}", progress_seconds=config.log.progress_seconds)
    if query_feats is not None:
      split_obj.query_features = [query_feats[int(i)] for i in split_obj.desc_ids]
    out[split] = built_splits[source] = split_obj
  return tokenizer, out
