"""A small folder in the reference's released layout (vsr_jax/data/reference.py), written by the
tests: a few videos and queries with random embeddings whose retrieval is known by
construction. Not a test module."""

import dataclasses
import json
import os

import numpy as np

from vsr_jax import config_lib
from vsr_jax.data import reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "reference.py")
DIM = 32


@dataclasses.dataclass
class Release:
  root: str
  split: str
  videos: list                # the corpus: docid2row's ids in row order
  video_vectors: np.ndarray   # [V, D] as written (not unit), in `videos` order
  desc_ids: list              # the annotation file's order
  gt: np.ndarray              # [Q] ground-truth position in `videos`
  query_vectors: np.ndarray   # [Q, D] as written (not unit), in annotation order
  r1: float                   # VR R@1 by construction

  def path(self, name: str) -> str:
    return reference.paths(self.root, self.split)[name]

  def meta_lines(self) -> list:
    with open(self.path("query_meta"), encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]

  def write_meta(self, lines: list) -> None:
    with open(self.path("query_meta"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(line) + "\n" for line in lines)

  def docid2row(self) -> dict:
    with open(self.path("docid2row"), encoding="utf-8") as f:
      return json.load(f)

  def write_docid2row(self, value) -> None:
    with open(self.path("docid2row"), "w", encoding="utf-8") as f:
      json.dump(value, f)


def write_release(root: str, *, split: str = "test", seed: int = 0, num_videos: int = 6,
                  num_queries: int = 10, wrong: int = 3, extra_videos: int = 1) -> Release:
  """`num_videos` annotated videos plus `extra_videos` without queries; query i belongs to video
  i % num_videos, and its vector lies next to that video's, except for the last `wrong`
  queries, whose vectors lie next to another video's (so VR R@1 = 1 - wrong / num_queries).
  Rows of both matrices and the lines of query_meta are shuffled; vectors are not unit."""
  rng = np.random.default_rng(seed)
  V = num_videos + extra_videos
  ids = [f"vid{i}_{'x' * i}" for i in range(V)]
  unit = rng.normal(size=(V, DIM))
  unit /= np.linalg.norm(unit, axis=1, keepdims=True)
  gt = np.arange(num_queries) % num_videos
  target = np.where(np.arange(num_queries) < num_queries - wrong, gt, (gt + 1) % num_videos)
  q = unit[target] + 0.05 * rng.normal(size=(num_queries, DIM))
  q *= rng.uniform(0.5, 2.0, size=(num_queries, 1))
  v = unit * rng.uniform(0.5, 2.0, size=(V, 1))
  desc_ids = [100 + 7 * i for i in range(num_queries)]
  words = ["red", "blue", "door", "chair", "cup", "book", "phone", "bag", "shoe", "lamp"]
  rows = [{"video": ids[gt[i]], "time": [1.0, 4.0 + i % 3], "desc_id": desc_ids[i],
           "duration": 20.0 + gt[i], "cog_desc": "a person holds something",
           "fig_desc": f"a person holds the {words[i % len(words)]} {words[(i * 3) % 10]}",
           "fig_desc_score": 0.4} for i in range(num_queries)]
  files = reference.paths(root, split)
  for path in files.values():
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(files["annotations"], "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  # The matrix rows in another order than the ids; the JSON object's keys in a third.
  row_of = rng.permutation(V)
  matrix = np.zeros((V, DIM), np.float32)
  matrix[row_of] = v
  np.save(files["video_embeddings"], matrix)
  with open(files["docid2row"], "w", encoding="utf-8") as f:
    json.dump({ids[i]: int(row_of[i]) for i in rng.permutation(V)}, f)
  # query_meta as the reference writes it: shuffled, qid '<desc_id>_fig', the video's id.
  order = rng.permutation(num_queries)
  np.save(files["query_embeddings"], q[order].astype(np.float32))
  with open(files["query_meta"], "w", encoding="utf-8") as f:
    for i in order:
      f.write(json.dumps({"qid": f"{desc_ids[i]}_fig", "query": rows[i]["fig_desc"],
                          "pos_doc_id": ids[gt[i]], "weight": 1.0, "fig_score": 0.4}) + "\n")
  corpus = sorted(range(V), key=lambda i: row_of[i])      # the videos in row order
  position = {video: p for p, video in enumerate(corpus)}
  return Release(root=root, split=split, videos=[ids[i] for i in corpus],
                 video_vectors=v[corpus].astype(np.float32), desc_ids=desc_ids,
                 gt=np.array([position[g] for g in gt]),
                 query_vectors=q.astype(np.float32), r1=1 - wrong / num_queries)


def write_rows(root: str, rows: list, *, split: str = "test", seed: int = 0, dim: int = 8) -> None:
  """Given annotation rows (a real FIG file's) as the reference releases them: the file as it
  is, random embeddings of its videos and of every row's query, query_meta shuffled."""
  rng = np.random.default_rng(seed)
  files = reference.paths(root, split)
  for path in files.values():
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(files["annotations"], "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  videos = list(dict.fromkeys(r["video"] for r in rows))
  np.save(files["video_embeddings"], rng.normal(size=(len(videos), dim)).astype(np.float32))
  with open(files["docid2row"], "w", encoding="utf-8") as f:
    json.dump({v: i for i, v in enumerate(videos)}, f)
  order = rng.permutation(len(rows))
  np.save(files["query_embeddings"], rng.normal(size=(len(rows), dim)).astype(np.float32))
  with open(files["query_meta"], "w", encoding="utf-8") as f:
    for i in order:
      f.write(json.dumps({"qid": f"{rows[i]['desc_id']}_fig", "query": rows[i]["fig_desc"].strip(),
                          "pos_doc_id": rows[i]["video"], "weight": 1.0}) + "\n")


def config(root: str, preset: str = "default", **overrides):
  """configs/reference.py over the release in `root` (its 'test' split), small for tests."""
  c = config_lib.load(f"{CONFIG}:{preset}", {"data.reference_dir": root})
  return config_lib.set_values(c, {"eval.tvr_top_k": 5, "eval.batch_size": 4,
                                   "data.eval_split": "test", "data.train_split": "test",
                                   **overrides})


def numpy_ranks(videos: np.ndarray, queries: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """The ground truth's 1-based rank under the inner product of L2-normalised rows (float64)."""
  v = videos / np.linalg.norm(videos, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  s = q.astype(np.float64) @ v.astype(np.float64).T
  return 1 + (s > s[np.arange(len(gt)), gt][:, None]).sum(1)
