"""Tests for vsr_jax.released_engine: the reference engine's single shot from its released
embeddings equals an independent NumPy computation on the same matrices, through the metric
code an engine row uses, and runs as a method row with no stage trained."""
import json
import os

import numpy as np
import pytest

from vsr_jax import config_lib, defaults, evaluate, metrics, registry, train
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import reference, sources
from vsr_jax import released_engine

import released


@pytest.fixture
def release(tmp_path):
  return released.write_release(str(tmp_path / "charades"))


def expected(release):
  """VR R@k, MRR and mean rank computed in NumPy (float64) from the written matrices."""
  rank = released.numpy_ranks(release.video_vectors, release.query_vectors, release.gt)
  out = {f"vr_r{k}": float(np.mean(rank <= k)) for k in metrics.RECALL_KS}
  out.update(mrr=float(np.mean(1.0 / rank)), mean_rank=float(np.mean(rank)))
  return rank, out


def test_the_row_kind_is_registered_and_reads_no_stage():
  kind = registry.ROW_KINDS.get("released_engine")
  assert kind.stage == "" and not kind.corpus


def test_single_shot_equals_numpy_on_the_same_matrices(release):
  config = released.config(release.root)
  _, splits = sources.load_data(config, "/unused", splits=("test",))
  split = splits["test"]
  videos, queries = reference.released_embeddings(release.root, split)
  row = released_engine.released_row(config, split, videos, queries)
  rank, want = expected(release)
  np.testing.assert_array_equal(row.turns[-1].rank, rank)
  got = evaluate.row_metrics(row, split)
  assert got["vr_r1"] == pytest.approx(release.r1)          # known by construction
  for key, value in want.items():
    assert got[key] == pytest.approx(value), key
    assert got["orig_" + key] == pytest.approx(value), key
  # The TVR lists: the top-k by score, whole videos as spans.
  top = row.vcmr[0]
  assert top.shape == (5, 4) and (np.diff(top[:, 3]) <= 0).all()
  assert (top[:, 1] == 0).all()
  np.testing.assert_allclose(top[:, 2], split.durations[top[:, 0].astype(int)])


def test_a_run_with_no_stage_reports_the_released_numbers(release, tmp_path):
  """configs/reference.py (default preset) through train_and_evaluate: no stage trains, no
  engine encodes the corpus, and metrics.json holds the released engine's row."""
  config = released.config(release.root)
  workdir = str(tmp_path / "run")
  all_metrics = train.train_and_evaluate(config, workdir)
  assert list(all_metrics) == ["released_engine"]
  _, want = expected(release)
  with open(os.path.join(workdir, "metrics.json")) as f:
    written = json.load(f)["released_engine"]
  for key, value in want.items():
    assert written[key] == pytest.approx(value), key
  assert written["vr_r1"] == pytest.approx(release.r1)
  assert os.path.isfile(os.path.join(workdir, "predictions", "released_engine.jsonl"))
  assert not os.path.exists(os.path.join(workdir, "index"))    # the engine's index: not built


def test_rows_of_the_kind_are_checked(release):
  row = dict(kind="released_engine", stage="", turns=0, refine="")
  bad = config_lib.set_values(config_lib.load(released.CONFIG + ":default"),
                              {"data.source": "synthetic", "engine.train.source": "stream"})
  with pytest.raises(ConfigError, match=r"config.eval.rows.released_engine: a released-embedding"
                                        r" row reads the split of the reference's release: "
                                        r"expected config.data.source='reference'"):
    defaults.validate(bad)
  with pytest.raises(ConfigError, match=r"config.data.reference_dir='': expected the folder"):
    defaults.validate(config_lib.load(released.CONFIG + ":default"))
  for field, value in (("stage", "engine"), ("refine", "sqr")):
    config = released.config(release.root)
    config = config_lib.set_values(config, {"eval.rows": {"ours": dict(row, **{field: value})}})
    with pytest.raises(ConfigError, match=f"config.eval.rows.ours.{field}={value!r}: expected "
                                          "''"):
      defaults.validate(config)


def test_our_text_path_against_their_index(release, tmp_path):
  """Kind 'released_index': the run's own Qwen3 text path (a tiny random Qwen3 here) searches
  the released video vectors. With a release whose query vectors are that text path's own,
  it reports exactly the released_engine row's numbers."""
  import sys
  sys.path.insert(0, os.path.join(released.REPO, "experiments"))
  import tiny_qwen3
  from vsr_jax.stages import base
  model = tiny_qwen3.make(str(tmp_path / "tiny"))
  row = dict(stage="", turns=0, refine="")
  rows = {"released_engine": dict(row, kind="released_engine"),
          "released_index": dict(row, kind="released_index")}
  config = released.config(release.root, **{
      "engine.text.kind": "qwen3", "engine.text.pretrained_dir": model,
      "engine.text.width": 64, "data.max_query_len": 16, "eval.rows": rows})
  ctx = base.Context.open(config, str(tmp_path / "ctx"), splits=("test",))
  split = ctx.splits["test"]
  ours = released_engine.own_query_vectors(ctx, split)
  assert ours.shape == (split.num_queries, 64)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  # Rewrite the release with our vectors: queries as ours (in query_meta's order), each video
  # the vector of its first query plus noise.
  files = reference.paths(release.root, "test")
  row_of_desc = {d: i for i, d in enumerate(split.desc_ids.tolist())}
  meta = release.meta_lines()
  np.save(files["query_embeddings"],
          ours[[row_of_desc[int(m["qid"].split("_")[0])] for m in meta]])
  rng = np.random.default_rng(0)
  videos = rng.normal(size=(split.num_videos, 64)).astype(np.float32)
  for q, v in enumerate(split.video_index):
    if q == list(split.video_index).index(v):
      videos[v] = ours[q] + 0.01 * videos[v]
  docid = release.docid2row()
  matrix = np.zeros_like(videos)
  for i, vid in enumerate(split.video_ids):
    matrix[docid[vid]] = videos[i]
  np.save(files["video_embeddings"], matrix)
  got = train.train_and_evaluate(config, str(tmp_path / "run"))
  for key in ("vr_r1", "vr_r5", "mrr", "mean_rank"):
    assert got["released_index"][key] == pytest.approx(got["released_engine"][key]), key
  assert got["released_index"]["vr_r1"] > 0.3
  # A tower with no pretrained query vector of its own is refused by name.
  scratch = released.config(release.root, **{"eval.rows": rows})
  with pytest.raises(ConfigError, match="no pretrained query vector"):
    train.train_and_evaluate(scratch, str(tmp_path / "run2"))
