"""Tests for experiments/real_language_standin.py: a small stand-in (40 real Charades-FIG videos,
the real sentence encoder) built, read back through the 'files' source, and trained and
evaluated end to end with configs/real_language_standin.py:smoke."""
import importlib.util
import json
import os

import numpy as np
import pytest

from vsr_jax import config_lib, defaults, train
from vsr_jax.data import annotations as annotations_lib
from vsr_jax.data import sources, store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "..", "shared", "data", "verified", "charades_fig_test.jsonl")
CONFIG = os.path.join(REPO, "configs", "real_language_standin.py")

spec = importlib.util.spec_from_file_location(
    "real_language_standin", os.path.join(REPO, "experiments", "real_language_standin.py"))
standin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(standin)

pytestmark = pytest.mark.skipif(not os.path.isfile(REAL), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def encode():
  from vsr_jax.engine import pretrained   # pylint: disable=g-import-not-at-top
  return pretrained.sentence_encoder("", max_len=64, batch=64)


@pytest.fixture(scope="module")
def built(tmp_path_factory, encode):
  out = str(tmp_path_factory.mktemp("standin") / "s")
  meta = standin.build(out, REAL, max_videos=40, encode=encode)
  return out, meta


def rows_of(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_split_by_video_with_the_real_rows(built):
  out, meta = built
  real = {r["desc_id"]: r for r in rows_of(REAL)}
  seen = {}
  for split in standin.SPLITS:
    rows = rows_of(os.path.join(out, "annotations", f"{split}.jsonl"))
    assert len(rows) == meta["splits"][split]["queries"] > 0
    videos = {r["video"] for r in rows}
    assert len(videos) == meta["splits"][split]["videos"]
    for v in videos:
      assert seen.setdefault(v, split) == split        # a video lives in one split only
    for r in rows:
      assert r == real[r["desc_id"]]                    # the file's rows, as they are
  assert sum(s["videos"] for s in meta["splits"].values()) == 40
  assert meta["feature_dim"] == 384 and meta["standin"]["annotations_sha1"]


def test_frames_carry_their_moments_content(built, encode):
  """A second inside a moment is nearer that moment's content (cog + fig_weight x fig) than a
  second no moment covers; the features are [ceil(duration), 384], finite."""
  out, _ = built
  moments = []
  for split in standin.SPLITS:
    moments += annotations_lib.read_verified(
        os.path.join(out, "annotations", f"{split}.jsonl"))[0]
  checked = 0
  for m in moments:
    feats = np.load(os.path.join(out, "features", m.video + ".npy"))
    assert feats.shape == (int(np.ceil(m.duration)), 384) and np.isfinite(feats).all()
    covered = np.zeros(len(feats), bool)
    for x in moments:
      if x.video == m.video:
        covered[int(np.floor(x.start)):int(np.ceil(x.end))] = True
    inside = slice(int(np.ceil(m.start)), int(np.floor(m.end)))
    if covered.all() or inside.stop - inside.start < 2:
      continue                  # no second left uncovered to compare with
    content = encode([m.coarse]) + 0.25 * encode([m.query])
    content /= np.linalg.norm(content)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert (unit[inside] @ content[0]).mean() > (unit[~covered] @ content[0]).mean() + 0.1
    checked += 1
    if checked == 5:
      break
  assert checked == 5


def test_loads_through_the_files_source(built):
  out, meta = built
  config = config_lib.load(CONFIG + ":smoke", {"data.dir": out})
  from vsr_jax.engine import pretrained   # pylint: disable=g-import-not-at-top
  tok = pretrained.tokenizer_for(config)
  _, splits = sources.load_data(config, "unused", splits=("train", "test"), tokenizer=tok)
  assert splits["test"].num_queries == meta["splits"]["test"]["queries"]
  assert splits["train"].features.shape[1:] == (64, 384)


def test_same_build_is_kept_another_is_refused(built, encode, tmp_path):
  out, meta = built
  assert standin.build(out, REAL, max_videos=40, encode=encode) == meta
  with pytest.raises(standin.StandinError, match=r"holds another dataset.*noise"):
    standin.build(out, REAL, max_videos=40, noise=0.1, encode=encode)
  assert not [p for p in os.listdir(os.path.dirname(out)) if ".partial-" in p]


def test_deterministic(built, encode, tmp_path):
  out, _ = built
  again = str(tmp_path / "again")
  standin.build(again, REAL, max_videos=40, encode=encode)
  for name in sorted(os.listdir(os.path.join(out, "features")))[:5]:
    a = np.load(os.path.join(out, "features", name))
    b = np.load(os.path.join(again, "features", name))
    np.testing.assert_allclose(a, b, atol=1e-5)   # same seed, same world (float32 sums)


def test_annotations_without_fig_desc(tmp_path, encode):
  path = tmp_path / "cog_only.jsonl"
  rows = rows_of(REAL)[:3]
  path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "fig_desc"})
                            for r in rows) + "\n")
  with pytest.raises(annotations_lib.AnnotationError,
                     match=r"cog_only.jsonl:1: missing field .fig_desc"):
    standin.build(str(tmp_path / "out"), str(path), encode=encode)
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(standin.StandinError, match="no such file"):
    standin.build(str(tmp_path / "out"), str(tmp_path / "absent.jsonl"), encode=encode)


def test_bad_fractions(tmp_path, encode):
  with pytest.raises(standin.StandinError, match="--fractions=0.5,0.5,0.5"):
    standin.build(str(tmp_path / "o"), REAL, fractions=("0.5", "0.5", "0.5"), encode=encode)
  with pytest.raises(standin.StandinError, match="no video to val"):
    standin.build(str(tmp_path / "o"), REAL, fractions=("0.9", "0.0", "0.1"), max_videos=10,
                  encode=encode)


def test_smoke_run_end_to_end(built, tmp_path):
  """configs/real_language_standin.py:smoke trains the engine and the stage-1 agent on the
  stand-in and evaluates them (the frozen MiniLM engine, the real queries); GRPO and HQR on the
  MiniLM engine are the same code as on the synthetic world, tested there."""
  out, meta = built
  rows = defaults.default_rows("engine_single_shot", "agent_sqr_stage1")
  # Fewer steps and a smaller agent than :smoke (the suite's time; the steps' code is what is
  # checked here, and the frozen MiniLM tower is as big as ever).
  config = config_lib.load(CONFIG + ":smoke", {
      "data.dir": out, "stages": "('engine', 'sft')", "eval.rows": str(rows),
      "engine.train.steps": "8", "engine.train.warmup_steps": "2",
      "engine.train.mine_every": "4", "sft.steps": "4", "sft.warmup_steps": "1",
      # 2 of the preset's 8 caption variants: each is a pass of the frozen MiniLM (~2.5 s
      # here, its code compiled unoptimised); the path is the same.
      "engine.train.caption_variants": "2",
      "data.max_frames": "32", "agent.width": "32", "agent.depth": "1", "agent.mlp_dim": "64",
      "agent.num_latents": "2", "agent.refine_hidden": "64", "eval.tvr_top_k": "5",
      "engine.embed_dim": "64", "engine.video.hidden": "32"})
  metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert list(metrics) == list(rows)
  assert metrics["engine_single_shot"]["num_queries"] == meta["splits"]["test"]["queries"]
  assert 0.0 <= metrics["agent_sqr_stage1"]["vr_r1"] <= 1.0
