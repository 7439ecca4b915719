"""Charades-FIG (VERIFIED): 3,720 test queries over 1,334 videos.

  python -m vsr_jax.main --config=configs/charades_fig.py[:preset] \
      --config.data.manual_dir=DIR --workdir=runs/charades_fig

Presets: default (from-scratch text tower), minilm (frozen all-MiniLM-L6-v2), smoke,
minilm_smoke (vsr_jax/real_config.py). DIR holds the files the builder's
MANUAL_DOWNLOAD_INSTRUCTIONS name (vsr_jax/data/tfds/verified.py); features default to
256-d at 1 fps (--config.data.feature_dim, --config.data.fps).
"""
from vsr_jax import real_config


def get_config(arg=None):
  c = real_config.real_config(arg, __file__, tfds_name="verified_fig/charades", eval_split="test",
                                     max_frames=64)
  # Charades' reward weights (METHOD.md §3).
  c.grpo.rewards.answer = 1.6
  c.grpo.rewards.grounding_iou = 0.35
  return c
