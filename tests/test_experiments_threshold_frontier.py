"""Tests for experiments/threshold_frontier.py: turn 1's accounting against the engine's single
shot (right top-1s accepted and grounded) on hand-made turns."""
import importlib.util
import os

import numpy as np
import pytest
from absl import flags

from vsr_jax import calibration
from vsr_jax.evaluate import Turn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("workdir", "row", "split", "view", "sharpen")


def load():
  """The script as a module, its absl flags taken out of the global registry again."""
  saved = {n: flags.FLAGS[n] for n in NAMES if n in flags.FLAGS}
  for name in saved:
    delattr(flags.FLAGS, name)
  spec = importlib.util.spec_from_file_location(
      "threshold_frontier", os.path.join(REPO, "experiments", "threshold_frontier.py"))
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  finally:
    for name in NAMES:
      if name in flags.FLAGS:
        delattr(flags.FLAGS, name)
    for name, flag in saved.items():
      flags.FLAGS[name] = flag
  return module


class Split:
  times = np.array([[0.0, 10.0]] * 4)


def turn(rank, pred, p=None):
  margin = None if p is None else np.log(np.asarray(p) / (1 - np.asarray(p)))
  return Turn(rank=np.asarray(rank), policy_rank=np.asarray(rank), retrieved=np.zeros(4, int),
              answer=np.ones(4, bool), pred_time=np.asarray(pred, float), margin=margin)


def test_turn_one_counts_right_top1s_accepted_and_grounded(capsys):
  frontier = load()
  # Queries 0, 1 have a right top-1; 2, 3 a wrong one. The engine grounds both right ones
  # (IoU 1, 0.5), the agent one (IoU 1; query 1's 0.4 misses).
  engine = turn([1, 1, 3, 2], [[0, 10], [0, 5], [0, 1], [0, 1]])
  agent = turn([1, 1, 3, 2], [[0, 10], [0, 4], [0, 1], [0, 1]], p=[0.97, 0.15, 0.35, 0.02])
  frontier.turn_one([agent], engine, Split)
  out = capsys.readouterr().out.splitlines()
  assert out[0] == ("turn 1: 50.0 % right top-1s; the engine grounds 100.0 % of them at "
                    "IoU >= 0.5, the agent 50.0 %")
  at = {float(l.split()[0]): l for l in out[1:]}
  assert set(at) == set(calibration.GRID)
  # p >= 0.1 keeps both right ones and rejects one wrong (0.02); 0.2 drops right 0.15; 0.4
  # rejects both wrong; 0.95 keeps 0.97 only.
  assert "accepts 100.0 % of right top-1s, rejects  50.0 % of wrong" in at[0.1]
  assert "accepts  50.0 % of right top-1s, rejects  50.0 % of wrong" in at[0.2]
  assert "accepts  50.0 % of right top-1s, rejects 100.0 % of wrong" in at[0.4]
  assert "accepts  50.0 % of right top-1s, rejects 100.0 % of wrong" in at[0.95]


def test_turn_one_refuses_a_first_turn_that_searched_another_query():
  frontier = load()
  engine = turn([1, 2, 3, 2], [[0, 10]] * 4)
  agent = turn([2, 1, 3, 2], [[0, 10]] * 4, p=[0.5] * 4)
  with pytest.raises(AssertionError, match="searched another query"):
    frontier.turn_one([agent], engine, Split)
