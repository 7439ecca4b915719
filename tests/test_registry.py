"""Tests for vsr_jax.registry: names -> pieces, errors that list the known names, and a toy piece
of each kind added the way the README says (one new file, named in config.imports, plus
config), used by the code that reads that kind."""
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsr_jax import config_lib, defaults, registry
from vsr_jax.config_lib import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"

# A user's new file: one toy piece of each kind, each counting its calls.
TOY = '''
import numpy as np
from vsr_jax import registry
from vsr_jax.agent import refiners
from vsr_jax.data import sources
from vsr_jax.engine import index

CALLS = {"reward": 0, "refiner": 0, "index": 0, "dataset": 0}


@registry.REWARDS.register("toy_turns")
def toy_turns(steps, batch, cfg):
  """Pays for every turn taken."""
  CALLS["reward"] += 1
  return steps["active"].sum(0).astype(np.float32)


class HalfSqr(refiners.SoftQueryRefinement):
  """SQR with its soft tokens halved."""
  def episode(self, agent, engine, agent_params, engine_params, out, sigma):
    CALLS["refiner"] += 1
    soft, logp, action = super().episode(agent, engine, agent_params, engine_params, out, sigma)
    return 0.5 * soft, logp, action


registry.REFINERS.register("toy_half_sqr", HalfSqr())


@registry.INDEX_BACKENDS.register("toy_exact")
def toy_exact(config, vectors, mesh, directory):
  CALLS["index"] += 1
  return index.ExactIndex.build(vectors)


def _first_videos(config, directory, splits, tokenizer):
  CALLS["dataset"] += 1
  return registry.DATASETS.get("synthetic").load(config, directory, splits, tokenizer)


registry.DATASETS.register("toy_source", sources.Source(_first_videos))
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  folder = tmp_path_factory.mktemp("user_code")
  (folder / "toy_pieces.py").write_text(textwrap.dedent(TOY))
  sys.path.insert(0, str(folder))
  names = {registry.REWARDS: "toy_turns", registry.REFINERS: "toy_half_sqr",
           registry.INDEX_BACKENDS: "toy_exact", registry.DATASETS: "toy_source"}
  yield
  sys.path.remove(str(folder))
  for reg, name in names.items():
    reg.unregister(name)
  sys.modules.pop("toy_pieces", None)


def toy_config(**overrides):
  config = config_lib.load(SMOKE, {"imports": "('toy_pieces',)"})
  with config.unlocked():
    config.grpo.rewards.toy_turns = 0.5          # a new reward's weight is config
  return config_lib.set_values(config, overrides)


def test_unknown_names_list_the_known_ones():
  with pytest.raises(ConfigError) as e:
    registry.REWARDS.get("anser", "grpo.rewards.anser")
  msg = str(e.value)
  assert msg.startswith("config.grpo.rewards.anser='anser': no reward of that name; known: ")
  assert "answer, grounding_iou" in msg and "did you mean 'answer'" in msg


def test_a_name_registered_twice_is_an_error():
  reg = registry.Registry("thing", "vsr_jax.registry")
  reg.register("a", 1)
  reg.register("a", 1)                               # the same object again: fine
  with pytest.raises(ValueError, match="registered twice"):
    reg.register("a", 2)


def test_validation_reads_the_registries(toy):
  """The toy names are valid only once config.imports brings their file in."""
  config = toy_config(**{"index.backend": "toy_exact", "agent.refine": "toy_half_sqr",
                         "data.source": "toy_source", "engine.train.source": "train"})
  defaults.validate(config)
  assert "toy_turns" in registry.REWARDS.names()
  bad = config_lib.load(SMOKE, {"index.backend": "toy_exakt"})
  with pytest.raises(ConfigError, match="no index backend of that name"):
    defaults.validate(bad)
  missing = config_lib.set_values(config_lib.load(SMOKE), {"imports": ("no_such_module",)})
  with pytest.raises(ConfigError, match="config.imports: cannot import 'no_such_module'"):
    defaults.validate(missing)


def test_toy_dataset_and_index_are_used(toy, tmp_path):
  import toy_pieces
  from vsr_jax.data import sources
  from vsr_jax.engine import index as index_lib
  config = toy_config(**{"data.source": "toy_source", "index.backend": "toy_exact",
                         "engine.train.source": "train"})
  defaults.validate(config)
  _, splits = sources.load_data(config, str(tmp_path), splits=("test",))
  assert toy_pieces.CALLS["dataset"] == 1 and splits["test"].num_queries > 0
  vectors = np.eye(4, dtype=np.float32)
  idx = index_lib.build_index(config, vectors)
  assert toy_pieces.CALLS["index"] == 1
  _, ids = idx.search(jnp.asarray(vectors[2:3]), 1)
  assert int(ids[0, 0]) == 2


def test_toy_reward_enters_the_total(toy):
  import toy_pieces
  from vsr_jax.objectives import rewards
  config = toy_config(**{"grpo.rewards.answer": 0.0, "grpo.rewards.grounding_iou": 0.0,
                         "grpo.rewards.retrieval_exp_neg_ret": 0.0})
  steps = {"active": jnp.array([[True, True], [True, False]])}     # [T, B]
  total, parts = rewards.total_reward(steps, {}, config.grpo)
  assert set(parts) == {"toy_turns"} and toy_pieces.CALLS["reward"] == 1
  np.testing.assert_allclose(total, [1.0, 0.5])


def test_toy_refiner_drives_the_episode(toy):
  """The rollout asks the registry: the halved soft tokens give a different refined query."""
  import toy_pieces
  from params import random_params
  from vsr_jax import rollout
  from vsr_jax.agent import policy
  from vsr_jax.engine import index as index_lib
  from vsr_jax.engine import towers
  config = toy_config(**{"agent.refine": "toy_half_sqr"})
  engine = towers.build_engine(config, 40)
  engine_params = towers.init_engine(engine, config, jax.random.PRNGKey(0))
  agent = policy.build_agent(config, 40, "toy_half_sqr")
  assert agent.refine == "sqr"                       # the head the toy refiner reads
  params = random_params(policy.init_agent(agent, config, jax.random.PRNGKey(1)), seed=1)
  F, D = config.data.max_frames, config.data.feature_dim
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(6, F, D)).astype(np.float32)
  nf = np.full(6, F, np.int32)
  videos = engine.apply({"params": engine_params}, feats, nf,
                        method=towers.DualEncoder.encode_video)
  split = type("S", (), dict(features=feats, num_frames=nf, frame_seconds=np.ones(6, np.float32),
                             durations=np.full(6, float(F), np.float32)))
  corpus = rollout.Corpus.from_split(index_lib.ExactIndex.build(videos), split)
  tokens = jnp.asarray(rng.integers(3, 40, size=(3, config.data.max_query_len)), jnp.int32)
  gt = jnp.arange(3)
  out = {}
  for name in ("sqr", "toy_half_sqr"):
    # Two turns, every verdict not_matched: turn 1 refines (a last turn's query is not).
    spec = rollout.EpisodeConfig(turns=2, num_latents=config.agent.num_latents, refine=name,
                                 sigma=0.05, mode="greedy")
    run = jax.jit(lambda p, c, t, g: rollout.episode(agent, engine, p, engine_params, c, t, g,
                                                     jax.random.PRNGKey(0), spec,
                                                     matched_margin=jnp.float32(1e9)))
    out[name] = run(params, corpus, tokens, gt)
  assert toy_pieces.CALLS["refiner"] >= 1
  assert out["sqr"]["refines"][0].all()
  assert not np.allclose(out["sqr"]["next_query"][0], out["toy_half_sqr"]["next_query"][0])

