"""Tests for vsr_jax.data.tfds.tvr: the TVR builder on the real val file and
tvr_video2dur_idx.json (../shared/data/tvr/), with HDF5 video and query features generated
for the ids they name."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import real_data
from vsr_jax.data.tfds import builder as builder_lib
from vsr_jax.data.tfds import tvr

DIM, QDIM = 8, 4
FPS = 1 / 1.5


def build(manual, data_dir, name="default-t", **fields):
  fields.setdefault("video_features", "video_features.h5")
  config = tvr.TvrConfig(name=name, fps=FPS, feature_dim=DIM, **fields)
  b = tvr.Tvr(config=config, data_dir=str(data_dir))
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return b


def query_len(desc_id):
  return 1 + desc_id % 3


def make_manual(manual, rows, *, skip_video=None, skip_query=None, lines=None, queries=True):
  manual.mkdir()
  if lines is None:
    real_data.link(real_data.TVR_VAL, manual)
  else:
    (manual / "tvr_val_release.jsonl").write_text("\n".join(lines) + "\n")
  real_data.link(real_data.TVR_DUR, manual)
  durations = json.load(open(real_data.TVR_DUR))["val"]
  videos = {r["vid_name"] for r in rows} - {skip_video}
  real_data.write_h5(manual / "video_features.h5", {
      v: real_data.features_of(v, real_data.num_rows(durations[v][0], FPS), DIM)
      for v in videos})
  if queries:
    real_data.write_h5(manual / "query_features.h5", {
        str(r["desc_id"]): real_data.features_of(str(r["desc_id"]), query_len(r["desc_id"]),
                                                 QDIM)
        for r in rows if r["desc_id"] != skip_query})


@pytest.fixture(scope="module")
def val(tmp_path_factory):
  real_data.require(real_data.TVR_VAL, real_data.TVR_DUR)
  tfds.disable_progress_bar()
  tmp = tmp_path_factory.mktemp("tvr")
  rows = real_data.rows(real_data.TVR_VAL)
  # Query features for all 10,895 queries would cost ~15 s of HDF5 I/O: a subset below.
  make_manual(tmp / "manual", rows, queries=False)
  return build(tmp / "manual", tmp / "data"), rows


def test_round_trip(val):
  b, rows = val
  assert set(b.info.splits) == {"val"}
  ds = b.as_data_source(split="val")
  durations = json.load(open(real_data.TVR_DUR))["val"]
  assert len(ds) == len({r["vid_name"] for r in rows}) == 2179
  seen = {}
  for i in range(0, len(ds)):
    ex = ds[i]
    video = ex["video"].decode()
    assert ex["duration"] == np.float32(durations[video][0])
    assert ex["features"].shape == (real_data.num_rows(durations[video][0], FPS), DIM)
    np.testing.assert_array_equal(
        ex["features"], real_data.features_of(video, ex["features"].shape[0], DIM))
    q = ex["queries"]
    assert "query_features" not in ex
    for j, desc_id in enumerate(q["desc_id"]):
      seen[int(desc_id)] = (video, int(q["row"][j]), q["start"][j], q["end"][j],
                       q["query"][j].decode(), q["coarse"][j].decode())
  assert len(seen) == len(rows) == 10895
  for index, r in enumerate(rows):
    assert seen[r["desc_id"]] == (r["vid_name"], index, np.float32(r["ts"][0]),
                                  np.float32(r["ts"][1]), r["desc"].strip(), "")


def test_query_features_round_trip(tmp_path):
  real_data.require(real_data.TVR_VAL, real_data.TVR_DUR)
  lines = open(real_data.TVR_VAL, encoding="utf-8").read().splitlines()[:300]
  rows = [json.loads(l) for l in lines]
  make_manual(tmp_path / "manual", rows, lines=lines)
  b = build(tmp_path / "manual", tmp_path / "data", query_features="query_features.h5",
            query_feature_dim=QDIM)
  ds = b.as_data_source(split="val")
  checked = 0
  for i in range(len(ds)):
    ex = ds[i]
    q = ex["queries"]
    offsets = np.cumsum([0] + list(q["query_len"]))
    assert ex["query_features"].shape == (offsets[-1], QDIM)
    for j, desc_id in enumerate(q["desc_id"]):
      np.testing.assert_array_equal(
          ex["query_features"][offsets[j]:offsets[j + 1]],
          real_data.features_of(str(desc_id), query_len(int(desc_id)), QDIM))
      checked += 1
  assert checked == 300


def test_quirk_counts_equal_the_files(val):
  b, rows = val
  counts = b.info.metadata["build"]["val"]
  # Counted independently from the raw rows (../shared/data/README.md: 1,622 and 436).
  assert counts["moments_starting_at_0"] == sum(r["ts"][0] == 0 for r in rows) == 1622
  assert counts["moments_shorter_than_one_clip"] == sum(
      r["ts"][1] - r["ts"][0] < 1.5 for r in rows) == 436
  assert counts.get("end_clipped_to_duration", 0) == sum(r["ts"][1] > r["duration"] for r in rows)
  assert "row_duration_differs_from_video2dur" not in counts


def small(tmp_path, edit=None, **kwargs):
  lines = open(real_data.TVR_VAL, encoding="utf-8").read().splitlines()[:6]
  if edit:
    lines[2] = edit(lines[2])
  rows = [json.loads(l) for l in open(real_data.TVR_VAL, encoding="utf-8").readlines()[:6]]
  make_manual(tmp_path / "manual", rows, lines=lines, **kwargs)
  return rows


def set_field(field, value):
  def edit(line):
    row = json.loads(line)
    row[field] = value
    return json.dumps(row)
  return edit


@pytest.mark.parametrize("edit, message", [
    (lambda line: line[:30], "not valid JSON"),
    (set_field("ts", [5.0, 1.0]), "field 'ts' is reversed"),
    (set_field("ts", ["a", 1.0]), "field 'ts' must be a finite number"),
    (set_field("vid_name", "nobody_s01e01_clip_00"), "is not in .*tvr_video2dur_idx.json"),
    (lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "desc"}),
     "missing field 'desc'"),
])
def test_bad_rows_name_file_and_line(tmp_path, edit, message):
  real_data.require(real_data.TVR_VAL, real_data.TVR_DUR)
  small(tmp_path, edit)
  with pytest.raises(builder_lib.BuildError, match=message) as err:
    build(tmp_path / "manual", tmp_path / "data")
  assert "tvr_val_release.jsonl:3" in str(err.value)


def test_video_without_features_fails_or_is_dropped(tmp_path):
  real_data.require(real_data.TVR_VAL, real_data.TVR_DUR)
  rows = small(tmp_path, skip_video=None)
  gone = rows[1]["vid_name"]
  import h5py
  with h5py.File(tmp_path / "manual" / "video_features.h5", "a") as f:
    del f[gone]
  with pytest.raises(builder_lib.BuildError, match="1 of 6 videos have no features") as err:
    build(tmp_path / "manual", tmp_path / "data")
  assert gone in str(err.value) and "video_features.h5" in str(err.value)
  b = build(tmp_path / "manual", tmp_path / "data", allow_missing_videos=True)
  counts = b.info.metadata["build"]["val"]
  assert counts["videos_without_features_dropped"] == 1
  assert counts["queries_dropped_with_their_video"] == sum(r["vid_name"] == gone for r in rows)
  assert len(b.as_data_source(split="val")) == 5


def test_query_features_without_the_key(tmp_path):
  real_data.require(real_data.TVR_VAL, real_data.TVR_DUR)
  rows = small(tmp_path, skip_query=None)
  missing = str(rows[3]["desc_id"])
  import h5py
  with h5py.File(tmp_path / "manual" / "query_features.h5", "a") as f:
    del f[missing]
  with pytest.raises(builder_lib.BuildError, match=f"query_features.h5: no key '{missing}'"):
    build(tmp_path / "manual", tmp_path / "data", query_features="query_features.h5",
          query_feature_dim=QDIM)
  assert not list((tmp_path / "data").glob("tvr/*/1.0.0"))


def test_video2dur_without_the_split(tmp_path):
  real_data.require(real_data.TVR_VAL, real_data.TVR_DUR)
  small(tmp_path)
  os.remove(tmp_path / "manual" / "tvr_video2dur_idx.json")
  (tmp_path / "manual" / "tvr_video2dur_idx.json").write_text('{"train": {}}')
  with pytest.raises(builder_lib.BuildError, match="tvr_video2dur_idx.json: no key 'val'"):
    build(tmp_path / "manual", tmp_path / "data")
