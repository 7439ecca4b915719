"""Tests for experiments/seed_table.py: mean ± std over runs and the gains it reports."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "seed_table", os.path.join(REPO, "experiments", "seed_table.py"))
seed_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seed_table)


def row(vr, vcmr, turns):
  m = {c: 0.5 for c in seed_table.COLUMNS}
  m.update(vr_r1=vr, **{"vcmr_r1_iou0.5": vcmr}, num_queries=10,
           per_turn=[{"vr_r1": t} for t in turns])
  return m


def write(tmp_path, name, engine, sqr, nr):
  d = tmp_path / name
  d.mkdir()
  (d / "metrics.json").write_text(json.dumps({
      "engine_single_shot": row(engine, 0.1, [engine]),
      "agent_no_refine": row(engine, nr, [engine]),
      "agent_sqr_stage2": row(sqr, 0.2, [engine, sqr])}))
  return str(d)


def test_table_and_gains(tmp_path, capsys):
  runs = [write(tmp_path, "a", 0.10, 0.16, 0.12), write(tmp_path, "b", 0.20, 0.24, 0.14)]
  seed_table.main(["x"] + runs)
  out = capsys.readouterr().out
  assert "2 runs, 10 queries each" in out
  # VR R@1 of the SQR row: 16 and 24 -> 20.0 ± 5.7 (sample std); its turns 15.0, 20.0.
  line = next(l for l in out.splitlines() if l.startswith("| agent_sqr_stage2"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[1 + seed_table.COLUMNS.index("vr_r1")] == "20.0 ± 5.7"
  assert cells[-2:] == ["15.0 ± 7.1", "20.0 ± 5.7"]
  assert "| engine_single_shot |" in out and out.count("| – |") == 2   # no turn 2
  # Gains per run: +6 and +4 VR points; VCMR 0.5 +8 and +6 over no_refine.
  assert "agent_sqr_stage2 VR R@1 over engine_single_shot: +5.0 ± 1.4 points (min +4.0)" in out
  assert ("agent_sqr_stage2 VCMR 0.5/R@1 over agent_no_refine: +7.0 ± 1.4 points (min +6.0)"
          in out)


def test_missing_or_mismatched_runs_are_errors(tmp_path):
  good = write(tmp_path, "a", 0.1, 0.2, 0.1)
  with pytest.raises(SystemExit, match="no metrics.json"):
    seed_table.main(["x", good, str(tmp_path / "nothing")])
  other = tmp_path / "c"
  other.mkdir()
  (other / "metrics.json").write_text(json.dumps({"engine_single_shot": row(0.1, 0.1, [0.1])}))
  with pytest.raises(SystemExit, match="has rows"):
    seed_table.main(["x", good, str(other)])
