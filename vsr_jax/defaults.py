"""The config schema: every field, its default, and the checks run before anything compiles.

Experiment files in `configs/` start from `base_config()` and change fields; the command line
changes them further with `--config.a.b=value`. A field that is not here does not exist.
"""

from __future__ import annotations

import ml_collections

from vsr_jax.config_lib import ConfigError
from vsr_jax.data import synthetic


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # ---- data: where the benchmark comes from and how it is cut into arrays.
  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"      # synthetic | files (a directory in the VERIFIED layout)
  c.data.dir = ""                  # '' -> <workdir>/data (synthetic is generated there)
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.max_frames = 64           # frames per video fed to the models (longer ones are resampled)
  c.data.max_query_len = 24        # word tokens per query (longer ones are cut, and counted)
  c.data.feature_dim = 256
  c.data.fps = 1.0                 # frames per second of the stored features

  # The embedded synthetic VCMR benchmark (vsr_jax/data/synthetic.py).
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.seed = 0            # the world (vocabulary, renderer) and every split
  c.data.synthetic.train_videos = 4000
  c.data.synthetic.val_videos = 200
  c.data.synthetic.test_videos = 2000
  c.data.synthetic.min_frames = 16     # video length in seconds (1 frame per second)
  c.data.synthetic.min_events = 2
  c.data.synthetic.max_events = 4
  c.data.synthetic.min_event_frames = 3
  c.data.synthetic.event_weight = 3.0  # events' share of a video vs. background gaps
  c.data.synthetic.family_min = 3      # videos per family (shared coarse events)
  c.data.synthetic.family_max = 8
  c.data.synthetic.coarse_values = (10, 16, 16)  # words used for who, action, object
  c.data.synthetic.fine_values = (8, 8, 8)       # words used for place, colour, detail
  c.data.synthetic.train_all_events = True       # train split: a caption for every event
  c.data.synthetic.min_queries = 1     # annotated moments per video
  c.data.synthetic.max_queries = 2
  c.data.synthetic.attr_dim = 32       # size of the latent attribute codes
  c.data.synthetic.render_dim = 256    # hidden width of the fixed random renderer
  c.data.synthetic.fine_salience = 0.6 # weight of fine attributes in a frame's code
  c.data.synthetic.noise = 0.5         # per-frame feature noise (std)
  c.data.synthetic.blend_frames = 2    # frames over which an event fades in and out
  c.data.synthetic.boundary_jitter = 0.15  # annotated boundaries off by up to this x length
  c.data.synthetic.chunk_videos = 4096 # videos generated per chunk (bounded memory)

  # ---- engine: the frozen dual-encoder search engine (stage 0 pretrains it).
  c.engine = ml_collections.ConfigDict()
  c.engine.embed_dim = 256
  c.engine.text = ml_collections.ConfigDict()
  c.engine.text.width = 128
  c.engine.text.depth = 2
  c.engine.text.heads = 4
  c.engine.text.mlp_dim = 256
  # Learned template slots after the query; Soft Query Refinement writes into the first N.
  c.engine.text.num_slots = 16
  c.engine.video = ml_collections.ConfigDict()
  c.engine.video.hidden = 128
  c.engine.video.depth = 1
  c.engine.train = ml_collections.ConfigDict()
  c.engine.train.steps = 800
  c.engine.train.batch_size = 128
  c.engine.train.learning_rate = 1e-3
  c.engine.train.warmup_steps = 100
  c.engine.train.weight_decay = 1e-4
  c.engine.train.temperature = 0.05
  # Fraction of fine-grained tokens (in fig_desc but not in cog_desc) kept in the engine's
  # training captions: the knob for how well the engine reads fine-grained queries.
  c.engine.train.fine_keep = 0.2
  # stream: fresh pools of the synthetic world's own pretraining videos (a generic engine that
  # never saw the benchmark's videos); train: the benchmark's train split.
  c.engine.train.source = "stream"
  c.engine.train.pool_videos = 4096    # videos per pool (stream)
  c.engine.train.mine_every = 200      # new pool / re-mine hard negatives with the current engine
  c.engine.train.mine_top_k = 16       # pool of mined hard negatives per caption
  c.engine.train.hard_negatives = 1    # mined negatives per caption in a batch

  # ---- index: nearest-neighbour search over the corpus' video vectors.
  c.index = ml_collections.ConfigDict()
  c.index.backend = "exact"        # exact (on device) | scann (host, through a callback)
  c.index.shard = False            # exact: shard the corpus over the mesh's devices
  c.index.scann = ml_collections.ConfigDict()
  c.index.scann.num_leaves = 0             # 0 -> about sqrt(corpus size)
  c.index.scann.num_leaves_to_search = 0   # 0 -> num_leaves // 10
  c.index.scann.training_sample_size = 100_000
  c.index.scann.dims_per_block = 2
  c.index.scann.anisotropic_quantization_threshold = 0.2
  c.index.scann.reorder = 100
  c.index.scann.threads = 0                # 0 -> all cores

  # ---- eval: the FIG and TVR protocols.
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.tvr_top_k = 100           # predictions per query in tvr_submission.json
  c.eval.grounding = "frame_similarity"  # baseline grounding: frame_similarity | whole_video

  # ---- mesh: device layout (data parallel).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1                  # devices on the data axis; -1 -> all

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 100
  c.log.progress_seconds = 10.0
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = 2
  c.checkpoint.every_steps = 500
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values that would fail late or silently; raises ConfigError naming the field."""
  def need(cond, field, expected):
    if not cond:
      value = config
      for part in field.split("."):
        value = value[part]
      raise ConfigError(f"config.{field}={value!r}: expected {expected}.")

  d, s = config.data, config.data.synthetic
  need(d.source in ("synthetic", "files"), "data.source", "'synthetic' or 'files'")
  need(d.source == "synthetic" or d.dir, "data.dir", "a directory when data.source='files'")
  need(d.max_frames >= 2, "data.max_frames", ">= 2")
  need(d.max_query_len >= 1, "data.max_query_len", ">= 1")
  need(d.feature_dim >= 1, "data.feature_dim", ">= 1")
  need(d.fps > 0, "data.fps", "> 0")
  if d.source == "synthetic":
    need(s.train_videos >= s.family_max, "data.synthetic.train_videos",
         ">= data.synthetic.family_max")
    need(s.test_videos >= s.family_max, "data.synthetic.test_videos",
         ">= data.synthetic.family_max")
    need(s.val_videos >= 0, "data.synthetic.val_videos", ">= 0")
    need(1 <= s.min_events <= s.max_events, "data.synthetic.min_events",
         "1 <= min_events <= max_events")
    need(2 <= s.family_min <= s.family_max, "data.synthetic.family_min",
         "2 <= family_min <= family_max")
    need(1 <= s.min_queries <= s.max_queries <= s.min_events, "data.synthetic.max_queries",
         "1 <= min_queries <= max_queries <= min_events")
    need(s.min_event_frames >= 1, "data.synthetic.min_event_frames", ">= 1")
    need(s.max_events * (s.min_event_frames + 1) - 1 <= d.max_frames, "data.max_frames",
         "room for max_events events and the gaps between them")
    need(s.min_frames <= d.max_frames, "data.synthetic.min_frames", "<= data.max_frames")
    need(s.noise >= 0, "data.synthetic.noise", ">= 0")
    need(s.chunk_videos >= 1, "data.synthetic.chunk_videos", ">= 1")
    need(s.blend_frames >= 0, "data.synthetic.blend_frames", ">= 0")
    need(0 <= s.boundary_jitter < 0.5, "data.synthetic.boundary_jitter", "in [0, 0.5)")
    need(s.event_weight > 0, "data.synthetic.event_weight", "> 0")
    for field, attrs in (("coarse_values", synthetic.COARSE), ("fine_values", synthetic.FINE)):
      values = s[field]
      need(len(values) == len(attrs) and all(
          2 <= n <= len(synthetic.WORDS[a]) for n, a in zip(values, attrs)),
           f"data.synthetic.{field}",
           f"{len(attrs)} counts for {', '.join(attrs)}, each from 2 to "
           f"({', '.join(str(len(synthetic.WORDS[a])) for a in attrs)})")
  e = config.engine
  need(e.text.heads >= 1, "engine.text.heads", ">= 1")
  need(e.text.width % e.text.heads == 0, "engine.text.width", "a multiple of engine.text.heads")
  need(e.text.num_slots >= 0, "engine.text.num_slots", ">= 0")
  need(0.0 <= e.train.fine_keep <= 1.0, "engine.train.fine_keep", "in [0, 1]")
  need(e.train.temperature > 0, "engine.train.temperature", "> 0")
  need(e.train.batch_size >= 2, "engine.train.batch_size", ">= 2")
  need(e.train.steps >= 0, "engine.train.steps", ">= 0")
  need(e.train.mine_every >= 1, "engine.train.mine_every", ">= 1")
  need(e.train.source in ("stream", "train"), "engine.train.source", "'stream' or 'train'")
  need(e.train.source == "train" or d.source == "synthetic", "engine.train.source",
       "'train' for data.source='files' (streams come from the synthetic world)")
  need(e.train.pool_videos >= 2 * s.family_max, "engine.train.pool_videos",
       ">= 2 * data.synthetic.family_max")
  need(e.train.hard_negatives <= e.train.mine_top_k, "engine.train.hard_negatives",
       "<= engine.train.mine_top_k")
  need(config.index.backend in ("exact", "scann"), "index.backend", "'exact' or 'scann'")
  need(config.eval.tvr_top_k >= 1, "eval.tvr_top_k", ">= 1")
  need(config.eval.grounding in ("frame_similarity", "whole_video"), "eval.grounding",
       "'frame_similarity' or 'whole_video'")
  need(config.mesh.data == -1 or config.mesh.data >= 1, "mesh.data", ">= 1 or -1 (all devices)")
