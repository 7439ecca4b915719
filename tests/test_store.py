"""Tests for vsr_jax.data.store: writing the synthetic dataset, loading splits, checks."""
import json
import glob
import os
import re
import shutil

import numpy as np
import pytest

from vsr_jax import config_lib
from vsr_jax.data import store, synthetic
from vsr_jax.data import tokenizer as tokenizer_lib
from vsr_jax.data.store import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def data_cfg(**overrides):
  return config_lib.load(SMOKE, {f"data.{k}": str(v) for k, v in overrides.items()}).data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """The smoke dataset, written once (tests that damage it work on a copy)."""
  out = str(tmp_path_factory.mktemp("store") / "ds")
  meta = store.write_synthetic(data_cfg(), out)
  return out, meta


@pytest.fixture
def dataset_copy(dataset, tmp_path):
  out = str(tmp_path / "copy")
  shutil.copytree(dataset[0], out)
  return out


def load(data_dir, split="train", data=None):
  data = data or data_cfg()
  tok = store.load_tokenizer(data_dir, "train")
  return store.load_split(data_dir, split, data, tok)


# ----------------------------------------------------------------------------- writing


def test_write_synthetic_layout(dataset):
  out, meta = dataset
  assert sorted(os.listdir(out)) == ["annotations", "features", "meta.json", "videos",
                                     "vocab.txt"]
  assert not glob.glob(out + ".partial*")
  assert meta["format"] == store.FORMAT and meta["feature_dim"] == 32
  assert set(meta["splits"]) == {"train", "test"}            # val_videos = 0: no file
  assert meta["splits"]["train"]["videos"] == 96
  assert meta["splits"]["test"]["videos"] == 64
  assert sorted(os.listdir(os.path.join(out, "annotations"))) == ["test.jsonl", "train.jsonl"]
  assert len(os.listdir(os.path.join(out, "features"))) == 96 + 64
  with open(os.path.join(out, "meta.json")) as f:
    assert json.load(f) == meta
  assert "chunk_videos" not in meta["synthetic"]
  assert meta["synthetic"]["max_frames"] == 32 and meta["synthetic"]["seed"] == 0
  for split in ("train", "test"):
    with open(os.path.join(out, "annotations", f"{split}.jsonl")) as f:
      assert sum(1 for _ in f) == meta["splits"][split]["queries"]


def test_video_records_expose_family_and_events(dataset):
  out, _ = dataset
  with open(os.path.join(out, "videos", "train.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 96
  first = records[0]
  assert first["video_id"] == "syn-train-0000000-0" and first["family"] == 0
  assert {"start", "end", "who", "place"} <= set(first["events"][0])
  feats = np.load(os.path.join(out, "features", first["video_id"] + ".npy"))
  assert feats.shape == (first["num_frames"], 32)
  # Members of one family share their coarse events.
  fam0 = [r for r in records if r["family"] == 0]
  assert len(fam0) >= 3
  key = lambda r: sorted((e["who"], e["action"], e["object"]) for e in r["events"])
  assert all(key(r) == key(fam0[0]) for r in fam0)


def test_vocab_covers_every_query(dataset):
  out, _ = dataset
  tok = store.load_tokenizer(out, "train")
  assert tok.vocab[2:] == synthetic.vocabulary(data_cfg().synthetic)
  split = load(out, "test")
  assert not (split.tokens == tokenizer_lib.UNK).any()


def test_load_split_shapes_and_values(dataset):
  out, meta = dataset
  split = load(out, "train")
  V, Q = 96, meta["splits"]["train"]["queries"]
  assert split.num_videos == V and split.num_queries == Q
  assert split.features.shape == (V, 32, 32) and split.features.dtype == np.float32
  assert split.tokens.shape == split.fine.shape == (Q, 24)
  assert split.times.shape == (Q, 2) and split.video_index.shape == (Q,)
  np.testing.assert_array_equal(split.frame_seconds, np.ones(V, np.float32))
  np.testing.assert_array_equal(split.durations, split.num_frames.astype(np.float32))
  with open(os.path.join(out, "annotations", "train.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert split.queries == [r["fig_desc"] for r in rows]
  np.testing.assert_array_equal(split.desc_ids, [r["desc_id"] for r in rows])
  np.testing.assert_allclose(split.times, [r["time"] for r in rows], rtol=1e-6)
  assert [split.video_ids[i] for i in split.video_index] == [r["video"] for r in rows]
  for i in (0, 17, V - 1):
    raw = np.load(os.path.join(out, "features", split.video_ids[i] + ".npy"))
    n = raw.shape[0]
    assert split.num_frames[i] == n
    np.testing.assert_array_equal(split.features[i, :n], raw)
    assert not split.features[i, n:].any()
  # Every synthetic query has at least its place, colour and detail words as fine tokens.
  assert (split.fine.sum(1) >= 3).all()
  assert not (split.fine & (split.tokens == tokenizer_lib.PAD)).any()
  assert split.corrections == {"rows": Q}


def test_reuse_when_meta_matches(dataset):
  out, meta = dataset
  meta_path = os.path.join(out, "meta.json")
  before = os.stat(meta_path).st_mtime_ns
  # chunk_videos does not change the bytes, so it does not stop reuse.
  again = store.write_synthetic(data_cfg(**{"synthetic.chunk_videos": 5}), out)
  assert again == meta
  assert os.stat(meta_path).st_mtime_ns == before


def test_dir_without_meta_is_an_error(tmp_path):
  out = tmp_path / "half"
  (out / "features").mkdir(parents=True)
  with pytest.raises(DatasetError, match="has no meta.json"):
    store.write_synthetic(data_cfg(), str(out))
  with pytest.raises(DatasetError, match="has no meta.json"):
    store.load_split(str(out), "train", data_cfg(), tokenizer_lib.WordTokenizer([]))


def test_corrupt_or_foreign_meta(tmp_path):
  (tmp_path / "meta.json").write_text("{not json")
  with pytest.raises(DatasetError, match="corrupt JSON"):
    store.read_meta(str(tmp_path))
  (tmp_path / "meta.json").write_text(json.dumps({"format": "other/9"}))
  with pytest.raises(DatasetError, match="format 'other/9'"):
    store.read_meta(str(tmp_path))


def test_different_config_names_fields(dataset):
  out, _ = dataset
  with pytest.raises(DatasetError) as e:
    store.write_synthetic(data_cfg(**{"synthetic.seed": 1, "synthetic.noise": 0.1}), out)
  assert "(noise, seed differ)" in str(e.value)
  with pytest.raises(DatasetError, match=r"\(feature_dim differ\)"):
    store.write_synthetic(data_cfg(feature_dim=16), out)


def test_interrupted_write_leaves_no_dataset(tmp_path, monkeypatch):
  out = str(tmp_path / "ds")
  real_save = np.save
  calls = []

  def failing_save(*args, **kwargs):
    calls.append(args[0])
    if len(calls) > 10:
      raise OSError("disk full (simulated)")
    return real_save(*args, **kwargs)

  monkeypatch.setattr(np, "save", failing_save)
  with pytest.raises(OSError, match="simulated"):
    store.write_synthetic(data_cfg(), out)
  assert len(calls) == 11
  assert not os.path.exists(out)
  monkeypatch.setattr(np, "save", real_save)
  meta = store.write_synthetic(data_cfg(), out)
  assert not glob.glob(out + ".partial*")
  assert len(os.listdir(os.path.join(out, "features"))) == 96 + 64
  assert load(out, "test").num_videos == 64
  assert meta["splits"]["test"]["videos"] == 64


def test_two_writers_of_one_data_dir(tmp_path, monkeypatch):
  """Runs sharing a data.dir may generate it at once: each writes its own temporary folder,
  the first to finish publishes, the other keeps that copy; a dead writer's leftovers go."""
  out = str(tmp_path / "data")
  stale = out + ".partial-999999999"
  os.makedirs(stale)
  real_replace = os.replace

  def other_writer_first(src, dst):
    if dst == out and not os.path.exists(out):
      shutil.copytree(src, out)                    # the other writer published first
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", other_writer_first)
  meta = store.write_synthetic(data_cfg(), out)
  assert meta["splits"]["test"]["videos"] == 64
  assert not glob.glob(out + ".partial*")
  assert load(out, "test").num_videos == 64


def test_nan_feature_names_the_file(dataset_copy):
  split = load(dataset_copy, "test")
  vid = split.video_ids[3]
  path = os.path.join(dataset_copy, "features", vid + ".npy")
  feats = np.load(path)
  feats[5, 2] = np.nan
  feats[7, 0] = np.inf
  np.save(path, feats)
  with pytest.raises(DatasetError) as e:
    load(dataset_copy, "test")
  assert path in str(e.value)
  assert "2 non-finite feature values (first at frame 5)" in str(e.value)


def test_wrong_feature_dim(dataset_copy):
  split = load(dataset_copy, "test")
  path = os.path.join(dataset_copy, "features", split.video_ids[0] + ".npy")
  np.save(path, np.zeros((10, 31), np.float32))
  with pytest.raises(DatasetError) as e:
    load(dataset_copy, "test")
  assert path in str(e.value) and "(10, 31)" in str(e.value)
  np.save(path, np.zeros((0, 32), np.float32))
  with pytest.raises(DatasetError, match="num_frames > 0"):
    load(dataset_copy, "test")
  os.remove(path)
  with pytest.raises(DatasetError, match="missing feature file"):
    load(dataset_copy, "test")


def test_config_feature_dim_differs_from_meta(dataset):
  with pytest.raises(DatasetError, match="feature_dim 32, but config.data.feature_dim is 16"):
    load(dataset[0], "test", data_cfg(feature_dim=16))


def test_missing_split(dataset):
  with pytest.raises(DatasetError, match="split 'val'"):
    load(dataset[0], "val")


# ----------------------------------------------------------------------------- fit_frames


def test_fit_frames_hand_examples():
  f5 = np.arange(5, dtype=np.float32)[:, None]
  # 5 -> 2: bounds round(linspace(0, 5, 3)) = [0, 2, 5]: mean(0, 1), mean(2, 3, 4).
  np.testing.assert_allclose(store.fit_frames(f5, 2), [[0.5], [3.0]])
  f7 = np.stack([np.arange(7.0), np.arange(7.0) * 10], 1).astype(np.float32)
  # 7 -> 3: round([0, 2.33, 4.67, 7]) = [0, 2, 5, 7]: means 0.5, 3, 5.5.
  np.testing.assert_allclose(store.fit_frames(f7, 3), [[0.5, 5], [3, 30], [5.5, 55]])
  # 10 -> 4: round([0, 2.5, 5, 7.5, 10]) = [0, 2, 5, 8, 10] (half to even).
  np.testing.assert_allclose(store.fit_frames(np.arange(10.0)[:, None], 4),
                             [[0.5], [3.0], [6.0], [8.5]])
  # Not longer than max_frames: unchanged.
  assert store.fit_frames(f5, 5) is f5
  assert store.fit_frames(f5, 9) is f5


def test_load_split_pools_long_videos(tmp_path):
  """A hand-made 'files' dataset: 10 frames at 2 fps pooled to 4 model frames."""
  root = tmp_path / "files"
  (root / "annotations").mkdir(parents=True)
  (root / "features").mkdir()
  (root / "meta.json").write_text(json.dumps({"format": store.FORMAT, "fps": 2.0,
                                              "feature_dim": 3}))
  rows = [{"video": "long", "time": [1, 4], "desc_id": 1, "duration": 5.0,
           "cog_desc": "a man", "fig_desc": "a tall man"},
          {"video": "short", "time": [0, 9], "desc_id": 2, "duration": 1.5,
           "cog_desc": "", "fig_desc": "a dog"},
          {"video": "long", "time": [2, 3], "desc_id": 3, "duration": 5.5,
           "fig_desc": "man"}]
  (root / "annotations" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  np.save(root / "features" / "long.npy", np.repeat(np.arange(10.0)[:, None], 3, 1))
  np.save(root / "features" / "short.npy", np.ones((3, 3), np.float32))
  data = data_cfg(feature_dim=3, max_frames=4)
  tok = store.load_tokenizer(str(root), "test")          # no vocab.txt: built from queries
  assert tok.vocab == ["[PAD]", "[UNK]", "a", "dog", "man", "tall"]
  split = store.load_split(str(root), "test", data, tok)
  assert split.video_ids == ["long", "short"]
  np.testing.assert_array_equal(split.num_frames, [4, 3])
  np.testing.assert_allclose(split.frame_seconds, [5.0 / 4, 1.5 / 3])
  np.testing.assert_allclose(split.features[0, :, 0], [0.5, 3.0, 6.0, 8.5])
  np.testing.assert_array_equal(split.features[1, 3], 0)
  np.testing.assert_array_equal(split.video_index, [0, 1, 0])
  np.testing.assert_allclose(split.times, [[1, 4], [0, 1.5], [2, 3]])
  np.testing.assert_allclose(split.durations, [5.0, 1.5])   # first row's duration kept
  np.testing.assert_array_equal(split.fine[0, :3], [False, True, False])
  assert split.corrections == {"rows": 3, "end_clipped_to_duration": 1,
                               "videos_with_inconsistent_duration": 1,
                               "videos_pooled_to_max_frames": 1}


def test_query_without_words_is_an_error(tmp_path):
  root = tmp_path / "files"
  (root / "annotations").mkdir(parents=True)
  (root / "features").mkdir()
  (root / "meta.json").write_text(json.dumps({"format": store.FORMAT, "feature_dim": 2}))
  rows = [{"video": "v", "time": [0, 1], "desc_id": 41, "duration": 2, "fig_desc": "!!!"}]
  (root / "annotations" / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
  np.save(root / "features" / "v.npy", np.ones((2, 2), np.float32))
  with pytest.raises(DatasetError, match="desc_id 41 has a query with no known words"):
    store.load_split(str(root), "test", data_cfg(feature_dim=2),
                     tokenizer_lib.WordTokenizer(["a"]))


# ----------------------------------------------------------------- features on disk


def test_features_on_disk_equal_in_memory_and_are_reused(dataset_copy, monkeypatch):
  """data.features_on_disk: one read-only memory map per split with the same values as the
  in-memory load; a second load reuses it without reading a video file; a changed feature
  file rebuilds it."""
  on_disk = data_cfg(features_on_disk=True)
  want = load(dataset_copy, "test")
  got = load(dataset_copy, "test", on_disk)
  assert isinstance(got.features, np.memmap) and not got.features.flags.writeable
  np.testing.assert_array_equal(got.features, want.features)
  np.testing.assert_array_equal(got.num_frames, want.num_frames)
  np.testing.assert_array_equal(got.frame_seconds, want.frame_seconds)
  assert got.corrections == want.corrections
  prefix = os.path.join(dataset_copy, "cache", f"test.F{on_disk.max_frames}")
  assert sorted(os.listdir(os.path.dirname(prefix))) == [
      os.path.basename(prefix) + x for x in (".aux.npz", ".json", ".npy")]

  def no_read(*args, **kwargs):
    raise AssertionError("a video file was read although the memory map matches")

  monkeypatch.setattr(store, "load_features", no_read)
  again = load(dataset_copy, "test", on_disk)
  np.testing.assert_array_equal(again.features, want.features)
  monkeypatch.undo()
  path = os.path.join(dataset_copy, "features", want.video_ids[2] + ".npy")
  feats = np.load(path)
  np.save(path, feats + 1.0)
  changed = load(dataset_copy, "test", on_disk)
  np.testing.assert_array_equal(changed.features[2, :feats.shape[0]], feats + 1.0)


def test_features_on_disk_bad_file_leaves_nothing_behind(dataset_copy):
  """A bad video file stops the load with its name; no partial memory map stays (the
  corrected dataset then loads)."""
  on_disk = data_cfg(features_on_disk=True)
  split = load(dataset_copy, "test")
  path = os.path.join(dataset_copy, "features", split.video_ids[4] + ".npy")
  good = np.load(path)
  np.save(path, np.full_like(good, np.nan))
  with pytest.raises(DatasetError, match=re.escape(path)):
    load(dataset_copy, "test", on_disk)
  assert os.listdir(os.path.join(dataset_copy, "cache")) == []
  np.save(path, good)
  np.testing.assert_array_equal(load(dataset_copy, "test", on_disk).features, split.features)


def test_first_queries_keeps_the_corpus_whole(dataset):
  split = load(dataset[0], "test")
  head = store.first_queries(split, 5)
  assert head.num_queries == 5 and head.num_videos == split.num_videos
  assert head.features is split.features
  np.testing.assert_array_equal(head.video_index, split.video_index[:5])
  np.testing.assert_array_equal(head.tokens, split.tokens[:5])
  assert head.queries == split.queries[:5]
  assert store.first_queries(split, 0) is split
  assert store.first_queries(split, split.num_queries + 1) is split
