"""Tests for vsr_jax.data.tfds.source (data.source='tfds'): a TFDS dataset read back with
as_data_source gives the same store.Split as the direct path, built once, checked on reuse;
and the real-benchmark configs."""

import json
import logging
import os

import numpy as np
import pytest

import real_data
from vsr_jax import config_lib, defaults
from vsr_jax.data import sources
from vsr_jax.data import annotations, store
from vsr_jax.data import tokenizer as tokenizer_lib
from vsr_jax.data.tfds import builder as builder_lib
from vsr_jax.data.tfds import source

DIM = 8
CONFIGS = ("charades_fig", "didemo_fig", "activitynet_fig", "tvr")


def config_for(manual, **fields):
  c = defaults.base_config()
  c.data.source, c.data.manual_dir, c.data.feature_dim = "tfds", str(manual), DIM
  c.engine.train.source = "train"
  for key, value in fields.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  defaults.validate(c)
  return c


@pytest.fixture(scope="module")
def charades(tmp_path_factory):
  real_data.require(real_data.CHARADES)
  tmp = tmp_path_factory.mktemp("source")
  rows = real_data.rows(real_data.CHARADES)
  real_data.link(real_data.CHARADES, tmp / "manual")
  real_data.write_npy_features(tmp / "manual" / "features",
                               {r["video"]: r["duration"] for r in rows}, DIM)
  return tmp


def test_split_equals_the_direct_path(charades, caplog):
  config = config_for(charades / "manual")
  with caplog.at_level(logging.WARNING):
    tokenizer, splits = source.load_data(config, str(charades / "data"), ("train", "test"))
  assert "TRAINING ON THE 'test' ANNOTATIONS" in caplog.text       # said loudly
  assert splits["train"] is splits["test"]                         # one copy
  got = splits["test"]
  # The direct path: the annotation file and the .npy files, without TFDS.
  moments, counts = annotations.read_verified(real_data.CHARADES)
  words = tokenizer_lib.WordTokenizer.build(m.query for m in moments)
  assert tokenizer.vocab == words.vocab
  load = lambda v: store.load_features(str(charades / "manual" / "features" / f"{v}.npy"), DIM)
  want = store.build_split("test", moments, load, config.data, words, fps=1.0, counts=counts,
                           where="direct")
  assert got.video_ids == want.video_ids and got.queries == want.queries
  for field in ("features", "num_frames", "frame_seconds", "durations", "desc_ids", "tokens",
                "fine", "video_index", "times"):
    np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
  assert got.corrections == want.corrections
  assert got.corrections["end_clipped_to_duration"] == 543
  assert (got.num_videos, got.num_queries) == (1334, 3720)
  assert got.query_features is None


def test_built_once_then_reused(charades):
  config = config_for(charades / "manual")
  builder = source.prepare(config.data, str(charades / "data"))
  info = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
  before = os.path.getmtime(info)
  source.prepare(config.data, str(charades / "data"))
  assert os.path.getmtime(info) == before
  # Settings equal to the registered config keep its name; others get their own directory.
  assert builder.builder_config.name.startswith("charades-")        # feature_dim 8
  assert source.make_builder(defaults.base_config().data, "/x").builder_config.name == "charades"


def test_a_split_file_added_after_the_build(tmp_path):
  real_data.require(real_data.CHARADES)
  rows = real_data.rows(real_data.CHARADES)[:20]
  manual = tmp_path / "manual"
  manual.mkdir()
  text = "".join(json.dumps(r) + "\n" for r in rows)
  (manual / "charades_fig_test.jsonl").write_text(text)
  real_data.write_npy_features(manual / "features", {r["video"]: r["duration"] for r in rows},
                               DIM)
  config = config_for(manual)
  source.prepare(config.data, str(tmp_path / "data"))
  (manual / "charades_fig_train.jsonl").write_text(text)
  with pytest.raises(builder_lib.BuildError, match="charades_fig_train.jsonl exists but .* "
                                                   "without split 'train'; delete it"):
    source.prepare(config.data, str(tmp_path / "data"))


def test_tvr_through_load_data(tmp_path):
  """The hook in sources.load_data, TVR's 1.5 s clips and its query features."""
  real_data.require(real_data.TVR_VAL, real_data.TVR_DUR)
  lines = open(real_data.TVR_VAL, encoding="utf-8").read().splitlines()[:40]
  rows = [json.loads(l) for l in lines]
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "tvr_val_release.jsonl").write_text("\n".join(lines) + "\n")
  real_data.link(real_data.TVR_DUR, manual)
  real_data.write_h5(manual / "video_features.h5",
                     {r["vid_name"]: real_data.features_of(r["vid_name"], 50, DIM) for r in rows})
  real_data.write_h5(manual / "q.h5", {str(r["desc_id"]): np.full((3, 4), r["desc_id"], np.float32)
                                       for r in rows})
  config = config_lib.load(os.path.join(real_data.REPO, "configs", "tvr.py") + ":smoke", {
      "data.manual_dir": str(manual), "data.feature_dim": str(DIM),
      "data.tfds.query_features": "q.h5", "data.tfds.query_feature_dim": "4",
      "data.max_frames": "32"})
  defaults.validate(config)
  _, splits = sources.load_data(config, str(tmp_path / "work"))
  assert set(splits) == {"train", "val"} and splits["train"] is splits["val"]
  val = splits["val"]
  assert val.num_queries == 40
  np.testing.assert_allclose(val.frame_seconds, 1.5 * 50 / 32, rtol=1e-6)  # 50 clips -> 32
  assert val.corrections["videos_pooled_to_max_frames"] == val.num_videos
  assert [q[0, 0] for q in val.query_features] == list(val.desc_ids)


def test_a_manual_dir_that_does_not_exist_is_named(tmp_path):
  config = config_for(tmp_path / "nope")
  with pytest.raises(builder_lib.BuildError, match=r"data.manual_dir='.*nope': no such "
                     "directory"):
    sources.prepare_data(config, str(tmp_path / "run"))


def test_unknown_dataset_name():
  c = defaults.base_config()
  c.data.tfds.name = "verified_fig/kinetics"
  with pytest.raises(builder_lib.BuildError, match="unknown config 'kinetics'"):
    source.make_builder(c.data, "/x")


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_validate_and_need_a_manual_dir(name):
  path = os.path.join(real_data.REPO, "configs", f"{name}.py")
  for preset in ("", ":minilm", ":smoke", ":minilm_smoke"):
    config = config_lib.load(path + preset, {"data.manual_dir": "/data"})
    defaults.validate(config)
    assert config.data.source == "tfds" and config.engine.train.source == "train"
    assert config.engine.text.kind == ("minilm" if "minilm" in preset else "scratch")
  with pytest.raises(config_lib.ConfigError, match="config.data.manual_dir=''"):
    defaults.validate(config_lib.load(path))
