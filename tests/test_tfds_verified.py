"""Tests for vsr_jax.data.tfds.verified: the VERIFIED FIG builder on the real annotation files
(../shared/data/verified/) with deterministic generated features."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

import real_data
from vsr_jax.data.tfds import builder as builder_lib
from vsr_jax.data.tfds import verified

DIM = 8


def build(manual, data_dir, name="charades-t", **fields):
  b = verified.VerifiedFig(config=verified.VerifiedConfig(name=name, feature_dim=DIM, **fields),
                           data_dir=str(data_dir))
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return b


def durations_of(rows):
  return {r["video"]: r["duration"] for r in rows}


@pytest.fixture(scope="module")
def charades(tmp_path_factory):
  real_data.require(real_data.CHARADES)
  tfds.disable_progress_bar()
  tmp = tmp_path_factory.mktemp("charades")
  rows = real_data.rows(real_data.CHARADES)
  real_data.link(real_data.CHARADES, tmp / "manual")
  real_data.write_npy_features(tmp / "manual" / "features", durations_of(rows), DIM)
  return build(tmp / "manual", tmp / "data"), rows


def test_charades_round_trip(charades):
  b, rows = charades
  assert set(b.info.splits) == {"test"}       # the real files here are test splits only
  ds = b.as_data_source(split="test")
  assert len(ds) == len({r["video"] for r in rows}) == 1334
  seen = {}
  for i in range(len(ds)):
    ex = ds[i]
    video = ex["video"].decode()
    raw_duration = durations_of(rows)[video]
    assert ex["duration"] == np.float32(raw_duration)     # times are float32
    np.testing.assert_array_equal(
        ex["features"],
        real_data.features_of(video, real_data.num_rows(raw_duration, 1.0), DIM))
    q = ex["queries"]
    for j in range(len(q["desc_id"])):
      seen[int(q["desc_id"][j])] = (video, int(q["row"][j]), float(q["start"][j]),
                                    float(q["end"][j]), q["query"][j].decode(),
                                    q["coarse"][j].decode())
  assert len(seen) == len(rows) == 3720
  for row_index, r in enumerate(rows):
    video, row, start, end, query, coarse = seen[r["desc_id"]]
    assert (video, row, query, coarse) == (r["video"], row_index, r["fig_desc"].strip(),
                                           r["cog_desc"].strip())
    assert start == np.float32(r["time"][0])
    assert end == np.float32(min(r["time"][1], r["duration"]))   # clipped, as logged


def test_charades_quirk_counts(charades):
  b, rows = charades
  clipped = sum(r["time"][1] > r["duration"] for r in rows)      # counted independently
  assert clipped == 543
  counts = b.info.metadata["build"]["test"]
  assert counts["end_clipped_to_duration"] == clipped
  assert counts["rows"] == len(rows)
  assert "start_clipped_to_0" not in counts


def test_didemo_builds_with_its_counts(tmp_path):
  real_data.require(real_data.DIDEMO)
  rows = real_data.rows(real_data.DIDEMO)
  real_data.link(real_data.DIDEMO, tmp_path / "manual")
  real_data.write_npy_features(tmp_path / "manual" / "features", durations_of(rows), DIM)
  b = build(tmp_path / "manual", tmp_path / "data", name="didemo-t")
  ds = b.as_data_source(split="test")
  assert len(ds) == 1002
  assert sum(len(ds[i]["queries"]["desc_id"]) for i in range(len(ds))) == 4013
  clipped = sum(r["time"][1] > r["duration"] for r in rows)
  assert b.info.metadata["build"]["test"]["end_clipped_to_duration"] == clipped == 150
  ids = {ds[i]["video"].decode() for i in range(len(ds))}
  assert "58792004@N06_8544469262_fd25eddb2e" in ids        # ids of DiDeMo's own shape


def test_activitynet_config_reads_val_2_as_test(tmp_path):
  # No ActivityNet-FIG file ships here: a few rows in its format.
  manual = tmp_path / "manual"
  manual.mkdir()
  rows = [{"video": "v_QOlSCBRmfWY", "time": [0.83, 19.86], "desc_id": 1, "duration": 82.73,
           "cog_desc": "a young woman is seen", "fig_desc": "A young woman in a pink top."},
          {"video": "v_ehGHCYKzyZ8", "time": [17.37, 60.81], "desc_id": 2, "duration": 61.72,
           "cog_desc": "a man jumps", "fig_desc": "A man in shorts jumps off a dock."}]
  (manual / "activitynet_fig_val_2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  real_data.write_npy_features(manual / "features", durations_of(rows), DIM)
  b = build(manual, tmp_path / "data", name="activitynet-t")
  assert set(b.info.splits) == {"test"}
  assert len(b.as_data_source(split="test")) == 2


def test_hdf5_video_features(tmp_path):
  real_data.require(real_data.CHARADES)
  rows = real_data.rows(real_data.CHARADES)[:30]
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "charades_fig_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  real_data.write_h5(manual / "feats.h5", {
      v: real_data.features_of(v, 5, DIM) for v in durations_of(rows)})
  b = build(manual, tmp_path / "data", video_features="feats.h5")
  ex = b.as_data_source(split="test")[0]
  np.testing.assert_array_equal(ex["features"], real_data.features_of(ex["video"].decode(), 5, DIM))


def write_with_bad_line(manual, bad_line, at=4):
  lines = open(real_data.CHARADES, encoding="utf-8").read().splitlines()[:6]
  lines[at - 1] = bad_line(lines[at - 1])
  manual.mkdir()
  (manual / "charades_fig_test.jsonl").write_text("\n".join(lines) + "\n")
  rows = [json.loads(l) for l in lines if l.startswith("{") and l.endswith("}")]
  real_data.write_npy_features(manual / "features", durations_of(rows), DIM)


def set_field(field, value):
  def edit(line):
    row = json.loads(line)
    row[field] = value
    return json.dumps(row)
  return edit


def drop_field(field):
  def edit(line):
    row = json.loads(line)
    del row[field]
    return json.dumps(row)
  return edit


@pytest.mark.parametrize("bad_line, message", [
    (lambda line: line[:40], "not valid JSON"),                     # a truncated line
    (drop_field("fig_desc"), "missing field 'fig_desc'"),
    (drop_field("time"), "missing field 'time'"),
    (set_field("time", ["11.6", 17.7]), "field 'time' must be a number"),
    (set_field("time", [17.7, 11.6]), "field 'time' is reversed"),
    (set_field("duration", "long"), "field 'duration' must be a number"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad_line, message):
  real_data.require(real_data.CHARADES)
  write_with_bad_line(tmp_path / "manual", bad_line)
  with pytest.raises(builder_lib.BuildError, match=message) as err:
    build(tmp_path / "manual", tmp_path / "data")
  assert "charades_fig_test.jsonl:4" in str(err.value)
  assert not list((tmp_path / "data").glob("verified_fig/*/1.0.0"))    # nothing built


def test_no_annotation_file_says_which(tmp_path):
  (tmp_path / "manual" / "features").mkdir(parents=True)
  with pytest.raises(builder_lib.BuildError, match="charades_fig_test.jsonl") as err:
    build(tmp_path / "manual", tmp_path / "data")
  assert "Put into the manual_dir" in str(err.value)


def test_unknown_config_name():
  with pytest.raises(builder_lib.BuildError, match="unknown VERIFIED config 'kinetics'"):
    verified.VerifiedConfig(name="kinetics")
