"""TVR (TVRetrieval): train and val (val is the evaluated split; test_public has no labels).

  python -m vsr_jax.main --config=configs/tvr.py[:preset] \
      --config.data.manual_dir=DIR --config.data.feature_dim=D --workdir=runs/tvr

Features: one HDF5 file keyed by vid_name, one row per 1.5 s clip (data.fps = 1 / 1.5),
DIR/video_features.h5 by default (--config.data.tfds.video_features=NAME). Presets as
vsr_jax/real_config.py; files as vsr_jax/data/tfds/tvr.py's instructions.
"""
from vsr_jax import real_config


def get_config(arg=None):
  c = real_config.real_config(arg, __file__, tfds_name="tvr/default", eval_split="val",
                                     max_frames=96)   # TVR clips run 60-150 s: up to 100 1.5 s clips
  c.data.fps = 1 / 1.5
  c.data.tfds.video_features = "video_features.h5"
  return c
