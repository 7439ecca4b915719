"""Mean ± standard deviation of every method row over finished runs (e.g. one per seed).

  python experiments/seed_table.py runs/seed0 runs/seed1 runs/seed2

Reads each run's metrics.json and prints a Markdown table: FIG R@1 columns in %, t1/t2 = VR
R@1 after turn 1/2, and per row the gains the issue asks about (SQR turn 2 over the engine's
single shot; VCMR 0.5/R@1 over agent_no_refine), each as mean ± sample std (ddof=1) and the
minimum over the runs. Runs must share the same rows; a missing or partial metrics.json is an
error naming the run.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from vsr_jax import workdir as workdir_lib

COLUMNS = ("vcmr_r1_iou0.3", "vcmr_r1_iou0.5", "vcmr_r1_iou0.7", "miou_r1", "ver_acc", "vr_r1",
           "vr_r5", "vr_r10", "orig_vr_r1")


def load(workdirs):
  runs = []
  for w in workdirs:
    path = os.path.join(w, "metrics.json")
    if not os.path.isfile(path):
      raise SystemExit(f"{path}: no metrics.json (has the run finished?)")
    runs.append(workdir_lib.read_json(path))
  rows = list(runs[0])
  for w, r in zip(workdirs, runs):
    if list(r) != rows:
      raise SystemExit(f"{w}/metrics.json has rows {list(r)}, {workdirs[0]} has {rows}")
  return rows, runs


def cell(values) -> str:
  v = 100 * np.asarray(values, float)
  return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def table(rows, runs) -> str:
  turns = max(len(r[row]["per_turn"]) for r in runs for row in rows)
  head = ["row", *COLUMNS] + [f"t{t + 1}" for t in range(turns)]
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    cells = [row] + [cell([r[row][c] for r in runs]) for c in COLUMNS]
    for t in range(turns):
      per = [r[row]["per_turn"][t]["vr_r1"] for r in runs if len(r[row]["per_turn"]) > t]
      cells.append(cell(per) if len(per) == len(runs) else "–")
    out.append("| " + " | ".join(cells) + " |")
  return "\n".join(out)


def gains(rows, runs) -> str:
  """Differences per run, in points: mean ± std (min)."""
  def line(name, diffs):
    d = 100 * np.asarray(diffs, float)
    spread = f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else ""
    return f"- {name}: {d.mean():+.1f}{spread} points (min {d.min():+.1f})"
  out = []
  base = "engine_single_shot"
  for row in rows:
    if row.startswith("agent_") and row != "agent_no_refine" and base in rows:
      out.append(line(f"{row} VR R@1 over {base}",
                      [r[row]["vr_r1"] - r[base]["vr_r1"] for r in runs]))
  for row in rows:
    if row in ("agent_sqr_stage1", "agent_sqr_stage2") and "agent_no_refine" in rows:
      out.append(line(f"{row} VCMR 0.5/R@1 over agent_no_refine",
                      [r[row]["vcmr_r1_iou0.5"] - r["agent_no_refine"]["vcmr_r1_iou0.5"]
                       for r in runs]))
  if {"agent_sqr_stage1", "agent_sqr_stage2"} <= set(rows):
    for c, name in (("vcmr_r1_iou0.5", "VCMR 0.5/R@1"), ("vr_r1", "VR R@1")):
      out.append(line(f"agent_sqr_stage2 {name} over agent_sqr_stage1",
                      [r["agent_sqr_stage2"][c] - r["agent_sqr_stage1"][c] for r in runs]))
  if {"agent_sqr_stage1", "agent_hqr"} <= set(rows):
    out.append(line("agent_sqr_stage1 VR R@1 over agent_hqr",
                    [r["agent_sqr_stage1"]["vr_r1"] - r["agent_hqr"]["vr_r1"] for r in runs]))
  return "\n".join(out)


def main(argv):
  if len(argv) < 2:
    raise SystemExit(__doc__)
  rows, runs = load(argv[1:])
  print(f"{len(runs)} runs, {int(runs[0][rows[0]]['num_queries'])} queries each\n")
  print(table(rows, runs))
  print()
  print(gains(rows, runs))


if __name__ == "__main__":
  main(sys.argv)
