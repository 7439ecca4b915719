"""The verifier's matched threshold, calibrated on a held-out split (config.eval.calibrate).

Greedy episodes take `matched` when p(matched) >= 0.5 (the argmax). A verifier that rejects
right videos too often (issue: agent rows lose VCMR to the engine's single shot, which accepts
every top-1) can be given another threshold: evaluation runs the agent's greedy episodes on the
calibration split (e.g. 'val', never the eval split) at every threshold of GRID and keeps the one
with the highest VCMR 0.5/R@1 there (ties: the one nearest 0.5), then evaluates the row with it.
A threshold is a margin on the verify logits (rollout.episode's matched_margin). One greedy
pass that never matches (threshold 1) gives every threshold's episodes: an episode stops at its
first `matched`, and until then it is the never-matching one turn for turn (the same searches,
refinements and rejected videos), so at threshold t it ends at the first turn whose margin
reaches t's, or where the never-matching episode stopped refining (`final_turns`). The span
prior's sharpness (SHARPEN_GRID) is chosen with it: one such pass per sharpness (it changes the
spans only). Pure selection logic here; evaluate.py runs the episode.
"""

from __future__ import annotations

import math

import numpy as np

from vsr_jax import config_lib

GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# The span prior's weight times these (agents with agent.span_prior > 0): trained with the
# prior at its learned weight, the span heads ground better with it sharper (measured: right
# top-1s grounded at IoU >= 0.5, x1 90.5 %, x3 97.1 %, x10 99.0 %).
SHARPEN_GRID = (1.0, 3.0, 10.0)
METRIC = "vcmr_r1_iou0.5"


class CalibrationError(config_lib.InputError):
  """A calibration split that cannot calibrate anything; the message names it."""


NEVER = 1.0   # the threshold no verdict reaches: the episode that refines while it can


def margin(threshold: float) -> float:
  """The logit margin of p(matched) >= threshold (log-odds; +inf for NEVER)."""
  if threshold >= NEVER:
    return math.inf
  return math.log(threshold / (1.0 - threshold))


def final_turns(margins: np.ndarray, refined: np.ndarray, threshold: float):
  """Where each episode ends at `threshold`, from the never-matching pass: margins [T, Q] (the
  verify logits' matched - not_matched at each turn) and refined [T, Q] (that pass refined its
  query after the turn). Returns (final turn [Q], its verdict `matched` [Q])."""
  # The comparison the compiled episode makes: float32 margin >= float32 threshold margin.
  matched = np.asarray(margins, np.float32) >= np.float32(margin(threshold))
  stops = matched | ~np.asarray(refined, bool)
  stops[-1] = True      # the last turn ends every episode
  turn = np.argmax(stops, 0)
  return turn, matched[turn, np.arange(matched.shape[1])]


def check_split(name: str, loaded_as: str) -> None:
  """The split the data source loaded for eval.calibrate is that split (a source may stand
  another in for a missing one, e.g. TFDS's train -> eval fallback: never calibrate on that)."""
  if loaded_as != name:
    raise CalibrationError(
        f"config.eval.calibrate={name!r}: the data has no split {name!r} (its source stands "
        f"split {loaded_as!r} in for it); calibrate on a held-out split the data has")


def with_calibration_split(config, splits: tuple) -> tuple:
  """The splits a run loads, plus eval.calibrate's (loaded at the start: a missing one fails
  before anything trains)."""
  name = config.eval.calibrate
  return tuple(splits) + ((name,) if name and name not in splits else ())


def choose(scores: dict, *, split: str, row: str, first_turn_hits: int) -> tuple:
  """The (threshold, sharpness) with the best score ({(threshold, sharpness): VCMR 0.5/R@1 on
  the split}); ties go to the threshold nearest 0.5, then the sharpness nearest 1 (as
  trained). first_turn_hits: calibration queries whose true video the first search returns —
  with none, no verdict can be right and nothing is calibrated."""
  if first_turn_hits == 0:
    raise CalibrationError(
        f"config.eval.calibrate={split!r}: row {row}'s first search returns the true video for "
        "none of the split's queries, so it has no matched example to calibrate the verifier on")
  best = max(scores.values())
  return min((k for k, s in scores.items() if s == best),
             key=lambda k: (abs(k[0] - 0.5), k[0], abs(math.log(k[1])), k[1]))
