"""data.source='reference': the reference's released data (METHOD.md section 7), read as it is.

One dataset's folder of the release, config.data.reference_dir, per split:

  raw_annotation/<split>.jsonl                            the FIG annotation file itself (the
                                                          reference copies it there unchanged)
  <split>/video_embedding_1fps/segment_embeds.npy         float [N_v, D]: one vector per video
  <split>/video_embedding_1fps/docid2row.json             video id -> row of segment_embeds.npy
  <split>/query_embedding/query_embeddings.<split>.npy    float [N_q, D]: one vector per query
  <split>/query_embedding/query_meta.<split>.jsonl        line i describes row i of the .npy

Accepted formats (anything else is a store.DatasetError naming the file, line or key and what
was expected):
- docid2row.json: a JSON object {video id: row} (what the reference writes) or a JSON list of
  video ids in row order. Every row of segment_embeds.npy belongs to exactly one video: rows
  in [0, N_v), no row twice, no id twice, one entry per row.
- query_meta.<split>.jsonl: one JSON object per row of query_embeddings.<split>.npy, in row
  order (blank lines skipped), with
    the query id: 'desc_id', 'query_id' or 'qid' (the first present), an integer or a string
      '<desc_id>' or '<desc_id>_fig' (the reference writes qid '<desc_id>_fig'); a desc_id of
      raw_annotation/<split>.jsonl, once;
    the video: 'pos_doc_id' (the reference's), 'video_id' or 'video': a video of docid2row.json
      and the annotation row's own video;
    optionally the text: 'query' or 'fig_desc', equal to the annotation row's fig_desc.
  Other fields (weight, fig_score, ...) are ignored.
- The two matrices: 2-D floating point of one width D. Their rows are L2-normalised before use,
  as the reference's evaluator does (annotation_process/eval_retrieval_npy.py, normalize=1).

The split (store.Split): queries and moments are raw_annotation/<split>.jsonl as
annotations.read_verified reads it; the corpus is docid2row.json's videos in row order (the
reference's index holds all of them; a video without queries takes its length from its
frames, 0 without). An annotation row without a query_meta line is dropped and counted
(`queries_without_released_embedding`; the reference's evaluator skips such rows too), as are
the rows read_verified drops (a moment that starts after its video's end: the reference still
scores their retrieval, so its numbers can differ by those few queries).

Features: the release has no per-frame features (video_npy_with_meta/ holds sampled raw
frames), and the project's towers and agent read features. data.reference_features_dir, when
set, is a folder of <video id>.npy files [frames, data.feature_dim] at data.fps (the project's
features/<video>.npy layout, extracted with a model of your choice), and every stage can run.
Without it the Split has no frames (features [V, 0, D]) and the config check refuses every
training stage: only rows that read no features run (kind 'released_engine',
vsr_jax/released_engine.py); nothing is trained or evaluated on made-up frames.

`released_embeddings(reference_dir, split)` gives the released matrices in a Split's video and
query order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
from absl import logging

from vsr_jax import registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import annotations as annotations_lib
from vsr_jax.data import sources, store
from vsr_jax.data import tokenizer as tokenizer_lib
from vsr_jax.data.store import DatasetError

VIDEO_DIR = "video_embedding_1fps"
QUERY_DIR = "query_embedding"
QUERY_ID_KEYS = ("desc_id", "query_id", "qid")
VIDEO_KEYS = ("pos_doc_id", "video_id", "video")
TEXT_KEYS = ("query", "fig_desc")
_QUERY_ID = re.compile(r"(\d+)(?:_fig)?")
_DROPPED = "queries_without_released_embedding"


def paths(reference_dir: str, split: str) -> dict[str, str]:
  """The released files of one split."""
  embed = os.path.join(reference_dir, split, VIDEO_DIR)
  query = os.path.join(reference_dir, split, QUERY_DIR)
  return {
      "annotations": os.path.join(reference_dir, "raw_annotation", f"{split}.jsonl"),
      "video_embeddings": os.path.join(embed, "segment_embeds.npy"),
      "docid2row": os.path.join(embed, "docid2row.json"),
      "query_embeddings": os.path.join(query, f"query_embeddings.{split}.npy"),
      "query_meta": os.path.join(query, f"query_meta.{split}.jsonl"),
  }


def _files(reference_dir: str, split: str) -> dict[str, str]:
  if not os.path.isdir(reference_dir):
    raise DatasetError(f"data.reference_dir={reference_dir!r}: no such directory (data.source="
                       "'reference' reads the reference's released data there)")
  files = paths(reference_dir, split)
  for path in files.values():
    if not os.path.isfile(path):
      layout = ", ".join(os.path.relpath(p, reference_dir) for p in files.values())
      raise DatasetError(f"split {split!r}: missing {path} (the released layout has, per split: "
                         f"{layout})")
  return files


def _matrix(path: str) -> np.ndarray:
  """A released embedding matrix, memory-mapped: rows are read where they are gathered."""
  try:
    matrix = np.load(path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise DatasetError(f"{path}: unreadable .npy file ({e})") from None
  if (matrix.ndim != 2 or 0 in matrix.shape or
      not np.issubdtype(matrix.dtype, np.floating)):
    raise DatasetError(f"{path}: an array of shape {matrix.shape} and dtype {matrix.dtype}, "
                       "expected a floating-point matrix [rows > 0, dim > 0]")
  return matrix


def read_docid2row(path: str, num_rows: int, matrix_path: str) -> list[str]:
  """docid2row.json checked against its matrix' row count: the video ids in row order."""
  def unique_keys(pairs):
    out = {}
    for key, value in pairs:
      if key in out:
        raise DatasetError(f"{path}: video id {key!r} appears twice")
      out[key] = value
    return out

  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f, object_pairs_hook=unique_keys)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON ({e})") from None
  if isinstance(data, list):
    entries = [(video, row) for row, video in enumerate(data)]
    if len(set(map(str, data))) != len(data):
      raise DatasetError(f"{path}: a video id appears twice in the list")
  elif isinstance(data, dict):
    entries = list(data.items())
  else:
    raise DatasetError(f"{path}: a JSON {type(data).__name__}, expected an object "
                       "{video id: row} (or a list of video ids in row order)")
  by_row = [None] * num_rows
  for video, row in entries:
    if not isinstance(video, str) or not video:
      raise DatasetError(f"{path}: video id {video!r}, expected a non-empty string")
    if isinstance(row, bool) or not isinstance(row, int):
      raise DatasetError(f"{path}: video {video!r} has row {row!r}, expected an integer row of "
                         f"{matrix_path}")
    if not 0 <= row < num_rows:
      raise DatasetError(f"{path}: video {video!r} has row {row}, out of range: {matrix_path} "
                         f"has {num_rows} rows (0..{num_rows - 1})")
    if by_row[row] is not None:
      raise DatasetError(f"{path}: videos {by_row[row]!r} and {video!r} both have row {row} "
                         "(expected one video per row)")
    by_row[row] = video
  if len(entries) != num_rows:
    raise DatasetError(f"{path}: {len(entries)} videos, but {matrix_path} has {num_rows} rows "
                       "(expected one video per row)")
  return by_row


@dataclasses.dataclass(frozen=True)
class QueryLine:
  """One line of query_meta: the query of its row of the query matrix."""
  desc_id: int
  video: str
  text: str | None
  where: str           # file:line


def _first_key(row: dict, keys: tuple):
  return next((k for k in keys if k in row), None)


def _query_id(row: dict, where: str) -> int:
  key = _first_key(row, QUERY_ID_KEYS)
  if key is None:
    raise DatasetError(f"{where}: no query id (expected a field {' or '.join(QUERY_ID_KEYS)}; "
                       f"the line has {sorted(row)})")
  value = row[key]
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  match = _QUERY_ID.fullmatch(value) if isinstance(value, str) else None
  if not match:
    raise DatasetError(f"{where}: field {key!r} is {value!r}, expected an integer desc_id or a "
                       "string '<desc_id>' or '<desc_id>_fig'")
  return int(match.group(1))


def read_query_meta(path: str, num_rows: int, matrix_path: str) -> list[QueryLine]:
  """query_meta.<split>.jsonl checked line by line and against its matrix' row count."""
  lines, seen = [], {}
  for lineno, where, row in annotations_lib.jsonl_rows(path, DatasetError):
    if not isinstance(row, dict):
      raise DatasetError(f"{where}: a JSON {type(row).__name__}, expected an object")
    desc_id = _query_id(row, where)
    if desc_id in seen:
      raise DatasetError(f"{where}: query id {desc_id} already on line {seen[desc_id]}")
    seen[desc_id] = lineno
    key = _first_key(row, VIDEO_KEYS)
    video = row.get(key)
    if not isinstance(video, str) or not video:
      raise DatasetError(f"{where}: no video (expected a non-empty string field "
                         f"{' or '.join(VIDEO_KEYS)}; the line has {sorted(row)})")
    key = _first_key(row, TEXT_KEYS)
    query = row.get(key)
    if key is not None and not isinstance(query, str):
      raise DatasetError(f"{where}: field {key!r} is {query!r}, expected a string")
    lines.append(QueryLine(desc_id, video, query, where))
  if len(lines) != num_rows:
    raise DatasetError(f"{path}: {len(lines)} query lines, but {matrix_path} has {num_rows} rows "
                       "(expected line i to describe row i)")
  return lines


@dataclasses.dataclass
class Released:
  """One split's released embeddings, checked: the videos and queries of their rows."""
  files: dict
  videos: list               # [N_v] video id of each row of video_matrix
  video_matrix: np.ndarray   # [N_v, D] (memory-mapped)
  queries: list              # [N_q] QueryLine of each row of query_matrix
  query_matrix: np.ndarray   # [N_q, D] (memory-mapped)


def read_released(reference_dir: str, split: str) -> Released:
  """The released files of a split, checked against each other (reads the .npy headers only)."""
  files = _files(reference_dir, split)
  videos_path, queries_path = files["video_embeddings"], files["query_embeddings"]
  video_matrix, query_matrix = _matrix(videos_path), _matrix(queries_path)
  if video_matrix.shape[1] != query_matrix.shape[1]:
    raise DatasetError(f"{queries_path}: vectors of width {query_matrix.shape[1]}, but "
                       f"{videos_path} has width {video_matrix.shape[1]} (expected one space)")
  videos = read_docid2row(files["docid2row"], video_matrix.shape[0], videos_path)
  queries = read_query_meta(files["query_meta"], query_matrix.shape[0], queries_path)
  known = set(videos)
  for q in queries:
    if q.video not in known:
      raise DatasetError(f"{q.where}: video {q.video!r} is not in {files['docid2row']} "
                         "(expected a video with a released embedding)")
  return Released(files, videos, video_matrix, queries, query_matrix)


def _check_against_annotations(released: Released, moments: list, counts) -> None:
  """Each query_meta line names an annotation row of its own video and text."""
  path = released.files["annotations"]
  by_id = {m.desc_id: m for m in moments}
  # Rows read_verified dropped ('desc_id video reason') are rows of the file all the same.
  dropped = {int(d.split(" ", 1)[0]) for d in getattr(counts, "dropped", ())}
  for q in released.queries:
    m = by_id.get(q.desc_id)
    if m is None:
      if q.desc_id in dropped:
        continue
      raise DatasetError(f"{q.where}: query id {q.desc_id} is not a desc_id of {path}")
    if q.video != m.video:
      raise DatasetError(f"{q.where}: video {q.video!r}, but {path} has desc_id {q.desc_id} "
                         f"in video {m.video!r}")
    if q.text is not None and q.text.strip() != m.query:
      raise DatasetError(f"{q.where}: query {q.text!r} differs from desc_id {q.desc_id}'s "
                         f"fig_desc in {path} ({m.query!r})")


def load_split(config, split: str, tokenizer, read=None) -> store.Split:
  """One split of the release as a store.Split (read: read_verified's result, when at hand)."""
  d = config.data
  released = read_released(d.reference_dir, split)
  path = released.files["annotations"]
  moments, counts = read or annotations_lib.read_verified(path)
  _check_against_annotations(released, moments, counts)
  embedded = {q.desc_id for q in released.queries}
  kept = [m for m in moments if m.desc_id in embedded]
  counts = annotations_lib.Corrections(counts)
  if len(kept) < len(moments):
    missing = [m.desc_id for m in moments if m.desc_id not in embedded]
    counts[_DROPPED] = len(missing)
    logging.warning("%s: %d queries have no line in %s, dropped (desc_id %s)", path,
                    len(missing), released.files["query_meta"],
                    ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else ""))
  if not kept:
    raise DatasetError(f"{path}: no query has a line in {released.files['query_meta']}")
  unqueried = len(released.videos) - len({m.video for m in kept})
  if unqueried:
    counts["videos_without_queries"] = unqueried
  load = None
  if d.reference_features_dir:
    load = lambda vid: store.load_features(
        os.path.join(d.reference_features_dir, vid + ".npy"), d.feature_dim)
  return store.build_split(split, kept, load, d, tokenizer, fps=d.fps, counts=counts, where=path,
                           progress_seconds=config.log.progress_seconds,
                           video_ids=released.videos)


def released_embeddings(reference_dir: str, split: store.Split) -> tuple[np.ndarray, np.ndarray]:
  """(videos [V, D], queries [Q, D]) float32, L2-normalised rows: the released embeddings of
  split.video_ids and split.desc_ids, in that order, after checking the files."""
  released = read_released(reference_dir, split.name)
  files = released.files
  row_of_video = {v: i for i, v in enumerate(released.videos)}
  missing = [v for v in split.video_ids if v not in row_of_video]
  if missing:
    raise DatasetError(f"{files['docid2row']}: no row for {len(missing)} of split "
                       f"{split.name!r}'s videos ({', '.join(map(repr, missing[:5]))})")
  row_of_query = {q.desc_id: i for i, q in enumerate(released.queries)}
  missing = [int(i) for i in split.desc_ids if int(i) not in row_of_query]
  if missing:
    raise DatasetError(f"{files['query_meta']}: no line for {len(missing)} of split "
                       f"{split.name!r}'s queries (desc_id {', '.join(map(str, missing[:5]))})")
  videos = _rows(released.video_matrix, [row_of_video[v] for v in split.video_ids],
                 files["video_embeddings"])
  queries = _rows(released.query_matrix, [row_of_query[int(i)] for i in split.desc_ids],
                  files["query_embeddings"])
  return videos, queries


def _rows(matrix: np.ndarray, rows: list, path: str) -> np.ndarray:
  out = np.asarray(matrix[np.asarray(rows, np.int64)], np.float32)
  bad = ~np.isfinite(out).all(1)
  if bad.any():
    raise DatasetError(f"{path}: row {rows[int(np.argmax(bad))]} has non-finite values")
  # The reference's clip: a zero row stays zero (it scores 0 against everything).
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _load(config, directory, splits, tokenizer):
  del directory      # the release is read where it is; nothing is written
  d = config.data
  reads = {}

  def read(split):
    if split not in reads:
      reads[split] = annotations_lib.read_verified(_files(d.reference_dir, split)["annotations"])
    return reads[split]

  # The word vocabulary of the train split, as the other sources build it.
  tokenizer = tokenizer or tokenizer_lib.WordTokenizer.build(
      m.query for m in read(d.train_split)[0])
  out = {}
  for split in dict.fromkeys(splits):
    out[split] = load_split(config, split, tokenizer, read(split))
  return tokenizer, out


def _check(config) -> None:
  d = config.data
  if not d.reference_dir:
    raise ConfigError("config.data.reference_dir='': expected the folder of the reference's "
                      "released data (data.source='reference')")
  if config.stages and not d.reference_features_dir:
    raise ConfigError(
        f"config.stages={tuple(config.stages)!r}: expected () with data.source='reference' and "
        "no data.reference_features_dir: the release holds no per-frame features to train on "
        "(video_npy_with_meta/ has raw frames). Set data.reference_features_dir to a folder of "
        "<video>.npy features, or evaluate the released embeddings alone (stages=(), a row "
        "of kind 'released_engine')")


registry.DATASETS.register("reference", sources.Source(_load, _check))
