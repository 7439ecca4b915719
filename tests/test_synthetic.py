"""Tests for vsr_jax.data.synthetic: determinism, family structure, geometry, descriptions."""
import collections
import os

import numpy as np
import pytest

from vsr_jax import config_lib
from vsr_jax.data import synthetic
from vsr_jax.data.tokenizer import split_words

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def data_cfg(**overrides):
  return config_lib.load(SMOKE, {f"data.{k}": str(v) for k, v in overrides.items()}).data


def generate(data, split="train", num_videos=None):
  """All chunks of a split concatenated: (chunks, videos, features, rows)."""
  s = data.synthetic
  n = num_videos if num_videos is not None else {"train": s.train_videos, "val": s.val_videos,
                                                 "test": s.test_videos}[split]
  chunks = list(synthetic.iter_chunks(s, split=split, num_videos=n,
                                      feature_dim=data.feature_dim,
                                      max_frames=data.max_frames))
  videos = [v for c in chunks for v in c.videos]
  feats = [f for c in chunks for f in c.features]
  rows = [r for c in chunks for r in c.annotations]
  return chunks, videos, feats, rows


@pytest.fixture(scope="module")
def smoke_train():
  return generate(data_cfg())


def fine_words(event):
  return {synthetic.WORDS[a][event[a]] for a in synthetic.FINE}


def event_of(video, time):
  """The event an annotated [start, end] describes: the one with the closest boundaries."""
  return min(video.events, key=lambda e: abs(e["start"] - time[0]) + abs(e["end"] - time[1]))


def coarse_key(event):
  return tuple(event[a] for a in synthetic.COARSE)


def fine_key(event):
  return tuple(event[a] for a in synthetic.FINE)


# ----------------------------------------------------------------------------- determinism


def test_same_config_same_data_for_any_chunk_size(smoke_train):
  chunks32, videos, feats, rows = smoke_train
  assert [len(c.videos) for c in chunks32] == [32, 32, 32]
  for chunk_videos, expected_sizes in ((7, [7] * 13 + [5]), (1000, [96])):
    chunks, v2, f2, r2 = generate(data_cfg(**{"synthetic.chunk_videos": chunk_videos}))
    assert [len(c.videos) for c in chunks] == expected_sizes
    assert v2 == videos
    assert r2 == rows
    assert len(f2) == len(feats)
    for a, b in zip(feats, f2):
      np.testing.assert_array_equal(a, b)


def test_regenerating_is_identical(smoke_train):
  _, videos, feats, rows = smoke_train
  _, v2, f2, r2 = generate(data_cfg())
  assert v2 == videos and r2 == rows
  for a, b in zip(feats, f2):
    np.testing.assert_array_equal(a, b)


def test_different_seed_different_data(smoke_train):
  _, videos, feats, rows = smoke_train
  _, v2, f2, r2 = generate(data_cfg(**{"synthetic.seed": 1}))
  assert len(v2) == len(videos)
  assert [v.events for v in v2] != [v.events for v in videos]
  assert [r["fig_desc"] for r in r2] != [r["fig_desc"] for r in rows]
  # Not one feature array is shared.
  for a, b in zip(feats, f2):
    assert a.shape != b.shape or not np.allclose(a, b)
  w0 = synthetic.make_world(data_cfg().synthetic, 32)
  w1 = synthetic.make_world(data_cfg(**{"synthetic.seed": 1}).synthetic, 32)
  assert not np.allclose(w0.w1, w1.w1)


# ----------------------------------------------------------------------------- structure


def test_family_structure(smoke_train):
  _, videos, _, _ = smoke_train
  s = data_cfg().synthetic
  families = collections.defaultdict(list)
  for v in videos:
    families[v.family].append(v)
  assert sorted(families) == list(range(len(families)))
  sizes = [len(families[f]) for f in sorted(families)]
  assert sum(sizes) == s.train_videos
  # Every family but the last (which may be cut to the requested count) has family_min..max.
  assert all(s.family_min <= n <= s.family_max for n in sizes[:-1])
  assert 1 <= sizes[-1] <= s.family_max
  multi = 0
  for fam, members in families.items():
    assert [v.video_id for v in members] == [f"syn-train-{fam:07d}-{m}"
                                             for m in range(len(members))]
    coarse = [collections.Counter(coarse_key(e) for e in v.events) for v in members]
    assert all(c == coarse[0] for c in coarse), f"family {fam}: coarse events differ"
    assert s.min_events <= len(members[0].events) <= s.max_events
    full = [sorted((coarse_key(e), fine_key(e)) for e in v.events) for v in members]
    for i in range(len(full)):
      for j in range(i + 1, len(full)):
        assert full[i] != full[j], f"family {fam}: members {i}, {j} are identical"
        multi += 1
  assert multi > 0
  # Different families are different worlds of events (at least most of them).
  keys = {tuple(sorted(coarse_key(e) for e in fam[0].events)) for fam in families.values()}
  assert len(keys) > len(families) // 2


def test_event_geometry(smoke_train):
  _, videos, _, _ = smoke_train
  data = data_cfg()
  s = data.synthetic
  for v in videos:
    need = len(v.events) * (s.min_event_frames + 1) - 1
    assert max(s.min_frames, need) <= v.num_frames <= data.max_frames
    assert 0 <= v.background < synthetic.NUM_BACKGROUNDS
    spans = [(e["start"], e["end"]) for e in v.events]
    assert spans == sorted(spans)
    for a, b in spans:
      assert 0 <= a and b <= v.num_frames
      assert b - a >= s.min_event_frames
    for (_, end), (start, _) in zip(spans, spans[1:]):
      assert start - end >= 1, f"{v.video_id}: events not separated by background"


def test_moments(smoke_train):
  _, videos, _, rows = smoke_train
  s = data_cfg().synthetic
  by_id = {v.video_id: v for v in videos}
  assert [r["desc_id"] for r in rows] == list(range(len(rows)))
  per_video = collections.Counter(r["video"] for r in rows)
  assert set(per_video) == set(by_id)
  # The train split captions every event (train_all_events); other splits 1-2 moments.
  assert s.train_all_events
  assert all(n == len(by_id[v].events) for v, n in per_video.items())
  for r in rows:
    v = by_id[r["video"]]
    start, end = r["time"]
    assert r["duration"] == float(v.num_frames)
    assert 0.0 <= start < end <= r["duration"]
    # Annotated boundaries are the event's, off by at most boundary_jitter of its length.
    e = event_of(v, r["time"])
    slack = s.boundary_jitter * (e["end"] - e["start"]) + 0.05
    assert abs(start - e["start"]) <= slack or start == r["duration"] - 1.0
    assert abs(end - e["end"]) <= slack or end == start + 1.0
  # Queried events of one video are distinct.
  for vid in by_id:
    times = [tuple(r["time"]) for r in rows if r["video"] == vid]
    assert len(times) == len(set(times))


def test_descriptions(smoke_train):
  _, videos, _, rows = smoke_train
  by_id = {v.video_id: v for v in videos}
  all_fine = {w for a in synthetic.FINE for w in synthetic.WORDS[a]}
  vocab = set(synthetic.vocabulary(data_cfg().synthetic))
  for r in rows:
    v = by_id[r["video"]]
    event = event_of(v, r["time"])
    fig, cog = split_words(r["fig_desc"]), split_words(r["cog_desc"])
    assert fine_words(event) <= set(fig), r
    assert not set(cog) & all_fine, r
    w = {a: synthetic.WORDS[a][event[a]] for a in synthetic.COARSE}
    assert r["cog_desc"] == f"the {w['who']} {w['action']} the {w['object']}"
    assert set(w.values()) <= set(fig)
    assert set(fig) <= vocab
  # Word order varies: the place phrase comes before the subject in some queries, after it
  # in others.
  place_first = set()
  for r in rows:
    event = event_of(by_id[r["video"]], r["time"])
    fig = split_words(r["fig_desc"])
    place_first.add(fig.index(synthetic.WORDS["place"][event["place"]])
                    < fig.index(synthetic.WORDS["who"][event["who"]]))
  assert place_first == {True, False}


def test_splits_disjoint():
  data = data_cfg()
  _, train_v, train_f, train_r = generate(data, "train", 12)
  _, test_v, test_f, test_r = generate(data, "test", 12)
  assert not {v.video_id for v in train_v} & {v.video_id for v in test_v}
  assert all(v.video_id.startswith("syn-test-") for v in test_v)
  # Family 0 of each split comes from a different rng stream.
  ev_train = [coarse_key(e) for e in train_v[0].events]
  ev_test = [coarse_key(e) for e in test_v[0].events]
  assert ev_train != ev_test
  assert [v.num_frames for v in train_v] != [v.num_frames for v in test_v]
  assert [r["fig_desc"] for r in train_r] != [r["fig_desc"] for r in test_r]
  assert not (train_f[0].shape == test_f[0].shape and np.allclose(train_f[0], test_f[0]))


def test_unknown_split():
  with pytest.raises(ValueError, match="unknown synthetic split 'dev'"):
    next(synthetic.iter_chunks(data_cfg().synthetic, split="dev", num_videos=3,
                               feature_dim=4, max_frames=32))


# ----------------------------------------------------------------------------- features


def test_feature_shapes(smoke_train):
  _, videos, feats, _ = smoke_train
  assert len(feats) == len(videos)
  for v, f in zip(videos, feats):
    assert f.dtype == np.float32
    assert f.shape == (v.num_frames, 32)
    assert np.isfinite(f).all()
  data = data_cfg(feature_dim=5, max_frames=20, **{"synthetic.min_frames": 20})
  _, videos, feats, _ = generate(data, "test", 5)
  assert [f.shape for f in feats] == [(20, 5)] * 5
  assert all(v.num_frames == 20 for v in videos)


def test_noiseless_frames_follow_the_events():
  """Without noise every frame is its event's (or the background's) rendering."""
  data = data_cfg(**{"synthetic.noise": 0.0, "synthetic.blend_frames": 0})
  _, videos, feats, _ = generate(data, "train", 10)
  world = synthetic.make_world(data.synthetic, data.feature_dim)
  for v, f in zip(videos, feats):
    which = np.zeros(v.num_frames, int)
    for k, e in enumerate(v.events):
      which[e["start"]:e["end"]] = k + 1
    codes = np.stack([world.backgrounds[v.background]]
                     + [world.event_code(e) for e in v.events])
    expected = world.render(codes)[which]
    np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-5)
    # Frames of different events differ.
    firsts = np.stack([f[e["start"]] for e in v.events])
    assert np.linalg.norm(firsts[:, None] - firsts[None], axis=-1)[
        ~np.eye(len(firsts), dtype=bool)].min() > 1e-3


def test_events_fade_in_and_out():
  """With blend_frames=2 the first frames of an event mix it with the background 1:2, 2:1."""
  data = data_cfg(**{"synthetic.noise": 0.0, "synthetic.blend_frames": 2})
  _, videos, feats, _ = generate(data, "train", 6)
  world = synthetic.make_world(data.synthetic, data.feature_dim)
  checked = 0
  for v, f in zip(videos, feats):
    bg = world.render(world.backgrounds[v.background][None])[0]
    for e in v.events:
      if e["end"] - e["start"] < 5:
        continue
      ev = world.render(world.event_code(e)[None])[0]
      np.testing.assert_allclose(f[e["start"]], ev / 3 + 2 * bg / 3, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(f[e["start"] + 1], 2 * ev / 3 + bg / 3, rtol=1e-4,
                                 atol=1e-5)
      np.testing.assert_allclose(f[e["end"] - 1], ev / 3 + 2 * bg / 3, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(f[e["start"] + 2], ev, rtol=1e-4, atol=1e-5)
      checked += 1
  assert checked > 5


def test_no_jitter_gives_exact_event_times():
  data = data_cfg(**{"synthetic.boundary_jitter": 0.0})
  _, videos, _, rows = generate(data, "test", 20)
  by_id = {v.video_id: v for v in videos}
  for r in rows:
    spans = {(float(e["start"]), float(e["end"])) for e in by_id[r["video"]].events}
    assert tuple(r["time"]) in spans


def test_noise_is_added():
  _, _, noisy, _ = generate(data_cfg(), "train", 4)
  _, _, clean, _ = generate(data_cfg(**{"synthetic.noise": 0.0}), "train", 4)
  residual = np.concatenate([a - b for a, b in zip(noisy, clean)])
  assert residual.std() == pytest.approx(0.5, rel=0.1)


def test_world_renders_unit_scale():
  world = synthetic.make_world(data_cfg().synthetic, 32)
  rng = np.random.default_rng(5)
  codes = np.stack([world.event_code({a: rng.integers(len(synthetic.WORDS[a]))
                                      for a in synthetic.COARSE + synthetic.FINE})
                    for _ in range(512)])
  assert world.render(codes).std() == pytest.approx(1.0, rel=0.15)


# ----------------------------------------------------------------------------- value counts


def test_vocabulary_follows_value_counts():
  data = data_cfg(**{"synthetic.coarse_values": (2, 3, 4), "synthetic.fine_values": (2, 2, 3)})
  vocab = synthetic.vocabulary(data.synthetic)
  assert vocab == (["man", "woman", "opens", "closes", "holds", "door", "box", "ball", "cup",
                    "kitchen", "garden", "red", "blue", "slowly", "quickly", "carefully"]
                   + list(synthetic.FILLERS) + list(synthetic.TEMPLATE_WORDS))
  _, videos, _, rows = generate(data, "train", 40)
  limits = dict(zip(synthetic.COARSE + synthetic.FINE, (2, 3, 4, 2, 2, 3)))
  seen = {a: set() for a in limits}
  for v in videos:
    for e in v.events:
      for a, n in limits.items():
        assert 0 <= e[a] < n
        seen[a].add(e[a])
  assert all(len(seen[a]) == n for a, n in limits.items())      # every value is used
  assert {w for r in rows for w in split_words(r["fig_desc"])} <= set(vocab)
  # The default counts are the full word lists.
  assert len(synthetic.vocabulary(data_cfg().synthetic)) == (
      sum(len(w) for w in synthetic.WORDS.values()) + len(synthetic.FILLERS)
      + len(synthetic.TEMPLATE_WORDS))


@pytest.mark.parametrize("field, value", [("coarse_values", (1, 16, 16)),
                                          ("fine_values", (8, 9, 8))])
def test_bad_value_counts(field, value):
  data = data_cfg(**{f"synthetic.{field}": value})
  with pytest.raises(ValueError, match="values for"):
    synthetic.num_values(data.synthetic)


def test_train_all_events_queries_every_event():
  data = data_cfg(**{"synthetic.train_all_events": True})
  _, videos, _, rows = generate(data, "train", 12)
  per_video = collections.Counter(r["video"] for r in rows)
  assert [per_video[v.video_id] for v in videos] == [len(v.events) for v in videos]
  # Only the train split is affected.
  assert generate(data, "test", 12)[3] == generate(data_cfg(), "test", 12)[3]


def test_train_all_events_keeps_the_videos():
  _, v0, f0, _ = generate(data_cfg(), "train", 12)
  _, v1, f1, _ = generate(data_cfg(**{"synthetic.train_all_events": True}), "train", 12)
  assert v1 == v0
  for a, b in zip(f0, f1):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- bounded memory


def test_many_videos_in_bounded_chunks(monkeypatch):
  data = data_cfg(feature_dim=2, **{"synthetic.attr_dim": 4, "synthetic.render_dim": 4,
                                    "synthetic.chunk_videos": 256})
  calls = []
  original = synthetic._family

  def counting_family(*args, **kwargs):
    calls.append(args[3])
    return original(*args, **kwargs)

  monkeypatch.setattr(synthetic, "_family", counting_family)
  n = 3000
  it = synthetic.iter_chunks(data.synthetic, split="test", num_videos=n, feature_dim=2,
                             max_frames=data.max_frames)
  first = next(it)
  # Lazy: the first chunk is out after ~256 / family_min families, not all ~850 of them.
  assert len(first.videos) == 256
  assert len(calls) <= 256 // data.synthetic.family_min + 1
  sizes, rows = [len(first.videos)], len(first.annotations)
  last_desc = first.annotations[-1]["desc_id"]
  for chunk in it:
    assert len(chunk.features) == len(chunk.videos)
    assert chunk.annotations[0]["desc_id"] == last_desc + 1
    last_desc = chunk.annotations[-1]["desc_id"]
    sizes.append(len(chunk.videos))
    rows += len(chunk.annotations)
  assert sum(sizes) == n
  assert sizes == [256] * (n // 256) + [n % 256]
  assert rows == last_desc + 1
  assert n * 1 <= rows <= n * 2          # min_queries = 1, max_queries = 2
  assert calls == list(range(len(calls)))
