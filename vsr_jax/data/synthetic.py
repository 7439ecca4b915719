"""The embedded synthetic VCMR benchmark: a deterministic world of videos, events and queries.

What makes the real fine-grained (FIG) benchmarks hard is built in:
  * a video is a sequence of per-second frame features: 2-5 events separated by background,
    each frame a fixed random nonlinear rendering of its event's attributes plus noise;
  * an event has coarse attributes (who / action / object) and fine ones (place / colour /
    detail); a moment's `cog_desc` names the coarse ones, its `fig_desc` (the query) all of
    them, with filler words and varying word order;
  * videos come in families that share their coarse events and differ in the fine attributes,
    so a coarse reading of a query matches a whole family (hard negatives).
Splits are disjoint (different seeds); every family is generated from its own seed
(seed, split, family), so the data does not depend on chunk size, and any corpus size is
produced in bounded memory, chunk by chunk (`iter_chunks`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

COARSE = ("who", "action", "object")
FINE = ("place", "colour", "detail")
WORDS = {
    "who": ("man", "woman", "boy", "girl", "chef", "dancer", "worker", "student", "doctor",
            "farmer"),
    "action": ("opens", "closes", "holds", "throws", "lifts", "drops", "pushes", "pulls",
               "cleans", "paints", "washes", "carries", "kicks", "folds", "cuts", "fixes"),
    "object": ("door", "box", "ball", "cup", "book", "chair", "bag", "bottle", "shirt", "table",
               "window", "lamp", "phone", "bucket", "rope", "plate"),
    "place": ("kitchen", "garden", "garage", "office", "bedroom", "street", "park", "hallway"),
    "colour": ("red", "blue", "green", "yellow", "black", "white", "orange", "purple"),
    "detail": ("slowly", "quickly", "carefully", "twice", "gently", "angrily", "quietly",
               "repeatedly"),
}
FILLERS = ("then", "clearly", "someone", "here", "again", "also", "there", "now")
TEMPLATE_WORDS = ("a", "the", "in", "at", "is", "seen")
NUM_BACKGROUNDS = 16
# 'pretrain' is the engine's own endless stream of videos, disjoint from the benchmark splits.
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2, "pretrain": 3}


def vocabulary(cfg) -> list[str]:
  """Every word a synthetic caption can contain, in a fixed order."""
  words = [w for attr, n in num_values(cfg).items() for w in WORDS[attr][:n]]
  return words + list(FILLERS) + list(TEMPLATE_WORDS)


@dataclasses.dataclass(frozen=True)
class World:
  """Fixed by the seed: attribute codes, background codes, and the frame renderer."""
  codes: dict                 # attribute -> [num_values, attr_dim]
  backgrounds: np.ndarray     # [NUM_BACKGROUNDS, attr_dim]
  w1: np.ndarray              # [attr_dim, render_dim]
  b1: np.ndarray              # [render_dim]
  w2: np.ndarray              # [render_dim, feature_dim]
  fine_salience: float

  def event_code(self, attrs: dict) -> np.ndarray:
    code = sum(self.codes[a][attrs[a]] for a in COARSE)
    return code + self.fine_salience * sum(self.codes[a][attrs[a]] for a in FINE)

  def render(self, codes: np.ndarray) -> np.ndarray:
    """[n, attr_dim] codes -> [n, feature_dim] clean frame features."""
    return (np.tanh(codes @ self.w1 + self.b1) @ self.w2).astype(np.float32)


def num_values(cfg) -> dict:
  """How many words of each attribute's list the world uses."""
  counts = dict(zip(COARSE, cfg.coarse_values)) | dict(zip(FINE, cfg.fine_values))
  for attr, n in counts.items():
    if not 2 <= n <= len(WORDS[attr]):
      raise ValueError(f"data.synthetic: {n} values for {attr!r}; expected 2..{len(WORDS[attr])}")
  return counts


def make_world(cfg, feature_dim: int) -> World:
  """cfg: the `data.synthetic` config section."""
  rng = np.random.default_rng([cfg.seed, 1000])
  d = cfg.attr_dim
  codes = {a: rng.standard_normal((n, d)) / np.sqrt(d) for a, n in num_values(cfg).items()}
  backgrounds = rng.standard_normal((NUM_BACKGROUNDS, d)) / np.sqrt(d)
  w1 = rng.standard_normal((d, cfg.render_dim)) * (2.0 / np.sqrt(d))
  b1 = rng.standard_normal(cfg.render_dim) * 0.1
  w2 = rng.standard_normal((cfg.render_dim, feature_dim))
  world = World(codes, backgrounds, w1, b1, w2, float(cfg.fine_salience))
  # Scale the renderer so clean features have unit standard deviation: the noise level in the
  # config then means the same thing at every feature width.
  probe = np.stack([world.event_code({a: rng.integers(len(c)) for a, c in codes.items()})
                    for _ in range(256)])
  scale = world.render(probe).std()
  return dataclasses.replace(world, w2=w2 / scale)


@dataclasses.dataclass
class Video:
  video_id: str
  family: int
  num_frames: int
  events: list               # [{'start': s, 'end': e, attr: value index, ...}] frame ranges [s, e)
  background: int


@dataclasses.dataclass
class Chunk:
  videos: list               # [Video]
  features: list             # [np.ndarray [num_frames, feature_dim] float32]
  annotations: list          # VERIFIED-style rows (dicts)


def _segments(rng, length: int, num_events: int, min_event: int,
              event_weight: float) -> list[tuple[int, int]]:
  """Splits `length` frames into background gaps and `num_events` event ranges [s, e)."""
  # Parts: gap0, ev1, gap1, ..., evK, gapK; inner gaps >= 1 frame, outer gaps may be empty.
  mins = [0] + [min_event, 1] * num_events
  mins[-1] = 0
  extra = length - sum(mins)
  # Events take `event_weight` times a gap's share of the remaining frames, on average.
  alpha = np.ones(len(mins))
  alpha[1::2] = event_weight
  sizes = np.array(mins) + rng.multinomial(extra, rng.dirichlet(alpha))
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  return [(int(bounds[2 * k + 1]), int(bounds[2 * k + 2])) for k in range(num_events)]


def _describe(rng, attrs: dict) -> tuple[str, str]:
  """(fig_desc, cog_desc): the fine-grained query and the coarse caption of one event."""
  w = {a: WORDS[a][attrs[a]] for a in COARSE + FINE}
  subject = [str(rng.choice(["the", "a"])), w["who"]]
  verb = [w["action"], str(rng.choice(["the", "a"])), w["colour"], w["object"]]
  place = [str(rng.choice(["in", "at"])), "the", w["place"]]
  detail = [w["detail"]]
  phrases = [subject, verb]
  # Word order varies: place and detail go before, between or after the core phrases.
  for extra in (place, detail):
    phrases.insert(int(rng.integers(0, len(phrases) + 1)), extra)
  words = [x for p in phrases for x in p]
  for _ in range(int(rng.integers(0, 3))):
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(FILLERS)))
  cog = f"the {w['who']} {w['action']} the {w['object']}"
  return " ".join(words), cog


def _annotated_time(rng, event: dict, length: int, jitter: float) -> list[float]:
  """An annotator's [start, end] seconds: the event's span with boundaries off by up to
  `jitter` of its length (annotations of real benchmarks disagree by seconds)."""
  start, end = event["start"], event["end"]
  size = end - start
  s = start + rng.uniform(-jitter, jitter) * size
  e = end + rng.uniform(-jitter, jitter) * size
  s = float(np.clip(round(s, 1), 0.0, length - 1.0))
  e = float(np.clip(round(e, 1), s + 1.0, float(length)))
  return [s, e]


def _family(cfg, max_frames: int, split: str, family: int, size: int):
  """Generates one family's videos (shared coarse events, own fine attributes and timing)."""
  rng = np.random.default_rng([cfg.seed, SPLIT_INDEX[split], family])
  values = num_values(cfg)
  num_events = int(rng.integers(cfg.min_events, cfg.max_events + 1))
  coarse = [{a: int(rng.integers(values[a])) for a in COARSE} for _ in range(num_events)]
  members = []
  for m in range(size):
    # Long enough for the family's events (short videos hold fewer events' worth of frames).
    need = num_events * (cfg.min_event_frames + 1) - 1
    length = int(rng.integers(max(cfg.min_frames, need), max_frames + 1))
    order = rng.permutation(num_events)
    spans = _segments(rng, length, num_events, cfg.min_event_frames, cfg.event_weight)
    events = []
    for (start, end), k in zip(spans, order):
      event = dict(coarse[k])
      event.update({a: int(rng.integers(values[a])) for a in FINE})
      event.update(start=start, end=end)
      events.append(event)
    video = Video(f"syn-{split}-{family:07d}-{m}", family, length, events,
                  int(rng.integers(NUM_BACKGROUNDS)))
    noise_seed = int(rng.integers(2**63 - 1))
    num_queries = int(rng.integers(cfg.min_queries, cfg.max_queries + 1))
    queried = sorted(rng.choice(num_events, size=num_queries, replace=False).tolist())
    # Captions come from their own stream, so that `train_all_events` (more captions to
    # learn from) leaves the videos themselves unchanged.
    text_rng = np.random.default_rng([cfg.seed, SPLIT_INDEX[split], family, m, 11])
    if split == "pretrain" or (split == "train" and cfg.train_all_events):
      queried = list(range(num_events))
    moments = []
    for k in queried:
      text = _describe(text_rng, events[k])
      moments.append((_annotated_time(text_rng, events[k], length, cfg.boundary_jitter), text))
    members.append((video, moments, noise_seed))
  return members


def _render_videos(world: World, noise: float, blend: int, members) -> list[np.ndarray]:
  """Frame features of a list of (video, _, noise_seed)."""
  codes, owners = [], []
  for i, (video, _, _) in enumerate(members):
    codes.append(world.backgrounds[video.background])
    codes.extend(world.event_code(e) for e in video.events)
    owners.append(len(video.events) + 1)
  clean = world.render(np.stack(codes))
  out, offset = [], 0
  for (video, _, noise_seed), n in zip(members, owners):
    per_event = clean[offset:offset + n]
    offset += n
    which = np.zeros(video.num_frames, np.int64)          # 0 = background
    for k, e in enumerate(video.events):
      which[e["start"]:e["end"]] = k + 1
    frames = per_event[which]
    # Events fade in and out over `blend` frames: no boundary is a clean cut.
    for k, e in enumerate(video.events):
      for j in range(min(blend, (e["end"] - e["start"]) // 2)):
        w = (j + 1) / (blend + 1)
        for t in (e["start"] + j, e["end"] - 1 - j):
          frames[t] = w * per_event[k + 1] + (1 - w) * per_event[0]
    rng = np.random.default_rng(noise_seed)
    frames = frames + noise * rng.standard_normal(frames.shape, dtype=np.float32)
    out.append(frames.astype(np.float32))
  return out


def iter_chunks(cfg, *, split: str, num_videos: int, feature_dim: int, max_frames: int,
                world: World | None = None, first_family: int = 0) -> Iterator[Chunk]:
  """Generates `num_videos` videos of `split` chunk by chunk (cfg: `data.synthetic`).

  first_family: start further into the split's stream (engine pretraining pools).
  """
  if split not in SPLIT_INDEX:
    raise ValueError(f"unknown synthetic split {split!r}; expected one of {list(SPLIT_INDEX)}")
  world = world or make_world(cfg, feature_dim)
  made, family, desc_id = 0, first_family, 0
  pending = []
  while made < num_videos:
    size_rng = np.random.default_rng([cfg.seed, SPLIT_INDEX[split], family, 7])
    size = min(int(size_rng.integers(cfg.family_min, cfg.family_max + 1)), num_videos - made)
    pending.extend(_family(cfg, max_frames, split, family, size))
    made += size
    family += 1
    while len(pending) >= cfg.chunk_videos or (made >= num_videos and pending):
      members, pending = pending[:cfg.chunk_videos], pending[cfg.chunk_videos:]
      rows = []
      for video, moments, _ in members:
        for time, (fig, cog) in moments:
          rows.append({
              "video": video.video_id,
              "time": time,
              "desc_id": desc_id,
              "duration": float(video.num_frames),
              "cog_desc": cog,
              "fig_desc": fig,
          })
          desc_id += 1
      yield Chunk([m[0] for m in members], _render_videos(world, cfg.noise, cfg.blend_frames, members), rows)
