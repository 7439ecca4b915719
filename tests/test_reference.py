"""Tests for vsr_jax.data.reference: the reference's released data read as it is, on a small
folder of that layout written by the tests (tests/released.py), and every bad input named."""
import json
import os

import numpy as np
import pytest

from vsr_jax import config_lib, defaults, registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import annotations, reference, sources
from vsr_jax.data.store import DatasetError

import real_data
import released


@pytest.fixture
def release(tmp_path):
  return released.write_release(str(tmp_path / "charades"))


def load(release, **overrides):
  """The release's test split (release: a Release or its folder)."""
  config = released.config(getattr(release, "root", release), **overrides)
  defaults.validate(config)
  _, splits = sources.load_data(config, "/unused", splits=("test",))
  return splits["test"]


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_source_is_registered():
  assert "reference" in registry.DATASETS.names()


def test_a_split_is_the_annotations_over_the_docid2row_corpus(release):
  split = load(release)
  assert split.video_ids == release.videos                   # docid2row's row order
  assert split.desc_ids.tolist() == release.desc_ids         # the annotation file's order
  assert split.video_index.tolist() == release.gt.tolist()
  assert split.queries[0].startswith("a person holds the")
  assert (split.tokens[:, 0] != 0).all()
  assert split.features.shape == (len(release.videos), 0, 256)   # no frames without features
  assert split.corrections["videos_without_queries"] == 1
  # An annotated video's length is its annotation's; the one without queries has none.
  assert sorted(set(split.durations.tolist())) == [0.0] + [20.0 + i for i in range(6)]


def test_released_embeddings_follow_the_split_order(release):
  split = load(release)
  videos, queries = reference.released_embeddings(release.root, split)
  np.testing.assert_allclose(videos, unit(release.video_vectors), atol=1e-6)
  np.testing.assert_allclose(queries, unit(release.query_vectors), atol=1e-6)
  # A split cut to its first queries (eval.max_queries) gets those queries' rows.
  from vsr_jax.data import store
  first = store.first_queries(split, 3)
  _, q3 = reference.released_embeddings(release.root, first)
  np.testing.assert_allclose(q3, queries[:3])


def test_other_accepted_shapes_of_docid2row_and_query_meta(release):
  """docid2row as a list of ids in row order; query ids as integers under desc_id, the video
  as video_id, no query text."""
  mapping = release.docid2row()
  release.write_docid2row(sorted(mapping, key=mapping.get))
  lines = [{"desc_id": int(m["qid"].split("_")[0]), "video_id": m["pos_doc_id"]}
           for m in release.meta_lines()]
  release.write_meta(lines)
  split = load(release)
  videos, queries = reference.released_embeddings(release.root, split)
  np.testing.assert_allclose(videos, unit(release.video_vectors), atol=1e-6)
  np.testing.assert_allclose(queries, unit(release.query_vectors), atol=1e-6)


def test_a_query_without_a_meta_line_is_dropped_and_counted(release):
  lines = release.meta_lines()
  gone = lines.pop(2)
  release.write_meta(lines)
  matrix = np.load(release.path("query_embeddings"))
  np.save(release.path("query_embeddings"), np.delete(matrix, 2, axis=0))
  split = load(release)
  assert split.num_queries == len(release.desc_ids) - 1
  assert int(gone["qid"].split("_")[0]) not in split.desc_ids
  assert split.corrections["queries_without_released_embedding"] == 1


def test_features_come_from_reference_features_dir(release, tmp_path):
  feats = tmp_path / "features"
  feats.mkdir()
  rng = np.random.default_rng(0)
  for i, video in enumerate(release.videos):
    np.save(feats / f"{video}.npy", rng.normal(size=(10 + i, 8)).astype(np.float32))
  split = load(release, **{"data.reference_features_dir": str(feats), "data.feature_dim": 8,
                           "data.max_frames": 12})
  assert split.features.shape == (len(release.videos), 12, 8)
  assert split.num_frames.tolist() == [min(10 + i, 12) for i in range(len(release.videos))]
  os.remove(feats / f"{release.videos[1]}.npy")
  with pytest.raises(DatasetError, match=f"missing feature file .*{release.videos[1]}.npy"):
    load(release, **{"data.reference_features_dir": str(feats), "data.feature_dim": 8})


def test_a_real_fig_file_as_the_release_holds_it(tmp_path):
  """raw_annotation/test.jsonl is the Charades-FIG test file itself (the reference copies it
  unchanged), with query_meta lines as the reference writes them."""
  real_data.require(real_data.CHARADES)
  rows = real_data.rows(real_data.CHARADES)
  root = str(tmp_path / "charades")
  released.write_rows(root, rows)
  split = load(root)
  kept, _ = annotations.read_verified(real_data.CHARADES)
  assert split.num_queries == len(kept) and split.num_videos == 1334
  videos, queries = reference.released_embeddings(root, split)
  assert videos.shape == (1334, 8) and queries.shape == (len(kept), 8)


# ---------------------------------------------------------------------------- config

def test_config_needs_the_folder_and_refuses_training_without_features(release):
  c = config_lib.load(released.CONFIG)
  with pytest.raises(ConfigError, match=r"config.data.reference_dir='': expected the folder"):
    defaults.validate(c)
  c = released.config(release.root, "features")
  with pytest.raises(ConfigError, match=r"config.stages=\('engine'.*no per-frame features"):
    defaults.validate(c)
  c = released.config(release.root, "features", **{"data.reference_features_dir": "/feats"})
  defaults.validate(c)


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", ["annotations", "video_embeddings", "docid2row",
                                  "query_embeddings", "query_meta"])
def test_a_missing_file_is_named(release, name):
  os.remove(release.path(name))
  with pytest.raises(DatasetError, match=f"split 'test': missing {release.path(name)} "
                                         r"\(the released layout has"):
    load(release)


def test_a_missing_folder_is_named(release):
  config = released.config(release.root)
  config = config_lib.set_values(config, {"data.reference_dir": release.root + "_nope"})
  with pytest.raises(DatasetError, match=r"data.reference_dir='.*_nope': no such directory"):
    sources.load_data(config, "/unused", splits=("test",))


def refused(release, what, write, value, match):
  """Writes `value` into the release's file `what`; loading fails naming that file."""
  write(value)
  with pytest.raises(DatasetError, match=match) as e:
    load(release)
  assert release.path(what) in str(e.value)


def docid2row_error(release, value, match):
  refused(release, "docid2row", release.write_docid2row, value, match)


def test_docid2row_row_out_of_range(release):
  mapping = release.docid2row()
  mapping[release.videos[0]] = len(mapping)
  docid2row_error(release, mapping, r"has row 7, out of range: .*segment_embeds.npy has 7 rows")


def test_docid2row_two_videos_on_one_row(release):
  mapping = release.docid2row()
  mapping[release.videos[0]] = mapping[release.videos[1]]
  docid2row_error(release, mapping, "both have row")


def test_docid2row_fewer_videos_than_rows(release):
  mapping = release.docid2row()
  del mapping[release.videos[-1]]       # a video without queries: only the count is off
  docid2row_error(release, mapping, r"6 videos, but .*segment_embeds.npy has 7 rows")


def test_docid2row_other_bad_shapes(release):
  mapping = release.docid2row()
  docid2row_error(release, {**mapping, release.videos[0]: "3"}, "expected an integer row")
  docid2row_error(release, list(mapping.items()), "video id .* expected a non-empty string")
  docid2row_error(release, 7, r"a JSON int, expected an object \{video id: row\}")
  text = json.dumps(mapping)[:-1] + f', "{release.videos[0]}": 0}}'    # a key twice
  with open(release.path("docid2row"), "w") as f:
    f.write(text)
  with pytest.raises(DatasetError, match=f"docid2row.json: video id '{release.videos[0]}' "
                                         "appears twice"):
    load(release)


def meta_error(release, lines, match):
  refused(release, "query_meta", release.write_meta, lines, match)


def test_query_meta_lines_must_match_the_matrix_rows(release):
  lines = release.meta_lines()
  meta_error(release, lines[:-1],
             r"9 query lines, but .*query_embeddings.test.npy has 10 rows")


def test_query_meta_unknown_video(release):
  lines = release.meta_lines()
  lines[4]["pos_doc_id"] = "no_such_video"
  meta_error(release, lines, r"query_meta.test.jsonl:5: video 'no_such_video' is not in "
                             r".*docid2row.json")


def test_query_meta_id_not_in_raw_annotation(release):
  lines = release.meta_lines()
  lines[3]["qid"] = "999_fig"
  meta_error(release, lines, r"query_meta.test.jsonl:4: query id 999 is not a desc_id of "
                             r".*raw_annotation/test.jsonl")


def test_query_meta_disagreeing_with_the_annotation(release):
  lines = release.meta_lines()
  other = next(v for v in release.videos if v != lines[0]["pos_doc_id"])
  meta_error(release, [dict(lines[0], pos_doc_id=other)] + lines[1:],
             r":1: video .* but .*raw_annotation/test.jsonl has desc_id")
  meta_error(release, [dict(lines[0], query="something else")] + lines[1:],
             r":1: query 'something else' differs from desc_id")


def test_query_meta_bad_lines(release):
  lines = release.meta_lines()
  meta_error(release, [lines[0], dict(lines[1], qid=lines[0]["qid"])] + lines[2:],
             r":2: query id \d+ already on line 1")
  meta_error(release, [{"query": "x", "pos_doc_id": release.videos[0]}] + lines[1:],
             r":1: no query id \(expected a field desc_id or query_id or qid")
  meta_error(release, [dict(lines[0], qid="q7")] + lines[1:],
             r":1: field 'qid' is 'q7', expected an integer desc_id")
  meta_error(release, [{"qid": lines[0]["qid"]}] + lines[1:],
             r":1: no video \(expected a non-empty string field pos_doc_id or video_id")
  with open(release.path("query_meta"), "w") as f:
    f.write('{"qid": "100_fig", \n')
  with pytest.raises(DatasetError, match=r"query_meta.test.jsonl:1: not valid JSON"):
    load(release)


def test_matrices_of_two_widths_or_bad_values(release):
  matrix = np.load(release.path("query_embeddings"))
  np.save(release.path("query_embeddings"), matrix[:, :-1])
  with pytest.raises(DatasetError, match=r"query_embeddings.test.npy: vectors of width 31, but "
                                         r".*segment_embeds.npy has width 32"):
    load(release)
  np.save(release.path("query_embeddings"), matrix.astype(np.int32))
  with pytest.raises(DatasetError, match=r"query_embeddings.test.npy: an array of shape .* "
                                         "expected a floating-point matrix"):
    load(release)
  bad = matrix.copy()
  bad[5, 3] = np.nan
  np.save(release.path("query_embeddings"), bad)
  split = load(release)                     # the values are read where they are used
  with pytest.raises(DatasetError, match=r"query_embeddings.test.npy: row 5 has non-finite"):
    reference.released_embeddings(release.root, split)
