"""Dataset sources by name (config.data.source): where a benchmark's splits come from.

A source is `load(config, directory, splits, tokenizer) -> (tokenizer, {split: store.Split})`
(tokenizer: the engine's own when its text tower brings one, else None: the source builds a
word vocabulary), an optional `check(config)` run with the config's validation, and an
optional `prepare(config, directory)` that makes what is missing there (generates, builds):
of a multi-host run's processes only the first prepares, then all of them load. A new
source is one file that registers itself (`@registry.DATASETS.register(name)`), imported
through config.imports.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from vsr_jax import registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import store


@dataclasses.dataclass(frozen=True)
class Source:
  load: Callable
  check: Callable | None = None
  prepare: Callable | None = None
  features_on_disk: bool = False   # honours config.data.features_on_disk


def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def load_data(config, workdir: str, *, splits=None, tokenizer=None):
  """(tokenizer, {split: Split}) of config.data's source, from <data.dir or workdir/data>.

  tokenizer: the engine's own (engine/towers.tokenizer_for), or None.
  """
  splits = tuple(splits or (config.data.train_split, config.data.eval_split))
  source = registry.DATASETS.get(config.data.source, "data.source")
  return source.load(config, data_dir(config, workdir), splits, tokenizer)


def prepare_data(config, workdir: str) -> None:
  """Makes config.data's source ready to load (a no-op when it is, or has nothing to make)."""
  source = registry.DATASETS.get(config.data.source, "data.source")
  if source.prepare:
    source.prepare(config, data_dir(config, workdir))


def _load_store(config, directory, splits, tokenizer):
  """A directory in the project's layout (annotation JSONL + one .npy per video)."""
  if not os.path.isdir(directory):
    raise store.DatasetError(f"data.dir={directory!r}: no such directory (data.source="
                             f"{config.data.source!r} reads annotations/<split>.jsonl and "
                             "features/<video>.npy there)")
  tokenizer = tokenizer or store.load_tokenizer(directory, config.data.train_split)
  return tokenizer, {s: store.load_split(directory, s, config.data, tokenizer,
                                         progress_seconds=config.log.progress_seconds)
                     for s in splits}


def _write_synthetic(config, directory):
  store.write_synthetic(config.data, directory, progress_seconds=config.log.progress_seconds)


def _load_synthetic(config, directory, splits, tokenizer):
  _write_synthetic(config, directory)     # a check only, once prepared
  return _load_store(config, directory, splits, tokenizer)


def _load_tfds(config, directory, splits, tokenizer):
  from vsr_jax.data.tfds import source as tfds_source   # TFDS imported only when used
  return tfds_source.load_data(config, directory, splits, tokenizer=tokenizer)


def _prepare_tfds(config, directory):
  from vsr_jax.data.tfds import source as tfds_source   # pylint: disable=g-import-not-at-top
  tfds_source.prepare(config.data, directory)


def _check_tfds(config) -> None:
  from vsr_jax.data.tfds import source as tfds_source   # pylint: disable=g-import-not-at-top
  known = [f"{f}/{c.name}" for f, (cls, _) in tfds_source.BUILDERS.items()
           for c in cls.BUILDER_CONFIGS]
  if config.data.tfds.name not in known:
    raise ConfigError(f"config.data.tfds.name={config.data.tfds.name!r}: expected one of "
                      f"{', '.join(known)}")


registry.DATASETS.register("synthetic", Source(_load_synthetic, prepare=_write_synthetic,
                                              features_on_disk=True))
registry.DATASETS.register("files", Source(_load_store, features_on_disk=True))
registry.DATASETS.register("tfds", Source(_load_tfds, _check_tfds, _prepare_tfds))
