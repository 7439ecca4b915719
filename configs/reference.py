"""The reference's released data (METHOD.md section 7), read as it is (vsr_jax/data/reference.py).

  python -m vsr_jax.main --config=configs/reference.py \
      --config.data.reference_dir=DIR --workdir=runs/reference_charades

DIR is one dataset's folder of the release (raw_annotation/, test/video_embedding_1fps/,
test/query_embedding/, ...). Presets:

  default    the reference engine's single shot from its own released embeddings (row
             released_engine): their VR R@k / MRR through our metric code; nothing trains
             and only the test split is read. Add a row of kind 'released_index' (with
             --config.engine.text.kind=qwen3 and the embedding model's directory) to search
             their index with our own Qwen3 text path (vsr_jax/released_engine.py).
  features   every stage trained on per-frame features of the released videos
             (--config.data.reference_features_dir=FEATS, <video>.npy each, at data.fps and
             --config.data.feature_dim), evaluated with the usual rows plus released_engine.
             Charades' reward weights: --config.grpo.rewards.answer=1.6
             --config.grpo.rewards.grounding_iou=0.35 (METHOD.md section 3).
"""
from vsr_jax import config_lib, defaults

PRESETS = ("default", "features")
RELEASED_ROW = dict(kind="released_engine", stage="")


def get_config(arg=None):
  preset = config_lib.check_preset(arg, PRESETS, __file__)
  c = defaults.base_config()
  c.data.source = "reference"
  c.data.reference_dir = ""          # required: --config.data.reference_dir=DIR
  c.data.eval_split = "test"
  c.data.max_query_len = 32          # ~99% of FIG queries' words (longer ones are cut, counted)
  c.engine.train.source = "train"    # 'stream' is the synthetic world's only
  if preset == "default":
    c.stages = ()
    # Nothing trains: the test split alone is read (its words are the vocabulary).
    c.data.train_split = "test"
    c.eval.rows = defaults.rows(released_engine=RELEASED_ROW)
  else:
    c.data.max_frames = 64
    # Their engine first: the last row (our stage 2) stays the submission.
    c.eval.rows = defaults.rows(released_engine=RELEASED_ROW, **config_lib.to_dict(c.eval.rows))
  return c
