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

A row of more than one turn gets two thresholds, (go-on, final): the verdict of every turn but
the last decides whether to search again; the last turn's is the agent's answer (measured on
the default: the SQR rows want a stricter first turn and a laxer last one, not one threshold
for both). With eval.calibrate_keep_ver the choice keeps the verdicts at least as accurate
(VER) on the split as the argmax's: VCMR alone is best served by a verifier that accepts
nearly everything, which is no verifier.
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


def turn_margins(threshold, turns: int) -> np.ndarray:
  """[turns] float32 margins of a threshold: one p(matched) for every turn, or a pair
  (go-on: every turn but the last, final: the last)."""
  go_on, final = (threshold, threshold) if np.isscalar(threshold) else threshold
  out = np.full(turns, margin(go_on), np.float32)
  out[-1] = margin(final)
  return out


def final_turns(margins: np.ndarray, refined: np.ndarray, threshold):
  """Where each episode ends at `threshold` (a p(matched), or a (go-on, final) pair), from the
  never-matching pass: margins [T, Q] (the verify logits' matched - not_matched at each turn)
  and refined [T, Q] (that pass refined its query after the turn). Returns (final turn [Q],
  its verdict `matched` [Q])."""
  # The comparison the compiled episode makes: float32 margin >= float32 threshold margin.
  margins = np.asarray(margins, np.float32)
  matched = margins >= turn_margins(threshold, margins.shape[0])[:, None]
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


def candidates(turns: int) -> list:
  """The thresholds tried for a row of `turns` turns: GRID, or (go-on, final) pairs of it."""
  if turns == 1:
    return list(GRID)
  return [(g, f) for g in GRID for f in GRID]


def argmax(turns: int):
  """The candidate that is the argmax verdict (p(matched) >= 0.5 in every turn)."""
  return 0.5 if turns == 1 else (0.5, 0.5)


def _off_half(threshold) -> tuple:
  pair = (threshold, threshold) if np.isscalar(threshold) else threshold
  return tuple(abs(t - 0.5) for t in pair) + tuple(pair)


def choose(scores: dict, *, split: str, row: str, first_turn_hits: int,
           ver: dict | None = None, min_ver: float | None = None) -> tuple:
  """The (threshold, sharpness) with the best score ({(threshold, sharpness): VCMR 0.5/R@1 on
  the split}; a threshold is a p(matched) or a (go-on, final) pair); ties go to the threshold
  nearest 0.5, then the sharpness nearest 1 (as trained). ver {threshold: VER on the split}
  and min_ver: only thresholds whose VER reaches min_ver compete (the argmax's own VER is
  always among them). first_turn_hits: calibration queries whose true video the first search
  returns — with none, no verdict can be right and nothing is calibrated."""
  if first_turn_hits == 0:
    raise CalibrationError(
        f"config.eval.calibrate={split!r}: row {row}'s first search returns the true video for "
        "none of the split's queries, so it has no matched example to calibrate the verifier on")
  if min_ver is not None:
    # A small tolerance: the argmax's VER recomputed from the same verdicts is a candidate.
    scores = {k: s for k, s in scores.items() if ver[k[0]] >= min_ver - 1e-9}
  best = max(scores.values())
  return min((k for k, s in scores.items() if s == best),
             key=lambda k: _off_half(k[0]) + (abs(math.log(k[1])), k[1]))
