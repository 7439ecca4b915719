"""Tests for vsr_jax/sweep.py: a smoke sweep end to end (sharing the engine, skipping finished
runs), the checks before anything runs, a workdir of another sweep, the dry run, failures,
and the results table on hand-made metrics."""

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from vsr_jax import sweep as sweep_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOFT = os.path.join(REPO, "configs", "sweeps", "soft_tokens.py") + ":smoke"
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def sweep_file(tmp_path, name="s", **keys):
  """A sweep file get_sweep(arg) -> dict(config=<smoke>, **keys)."""
  keys.setdefault("config", SMOKE)
  path = tmp_path / f"{name}.py"
  path.write_text(f"def get_sweep(arg=None):\n  return {keys!r}\n")
  return str(path)


def files_under(path):
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, _, fs in os.walk(path) for f in fs)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sweep") / "soft")
  lines = []
  status = sweep_lib.run_sweep(SOFT, root, parallel=1, out=lines.append)
  return root, status, lines


def test_smoke_sweep_shares_the_engine_and_writes_results(smoke):
  root, status, lines = smoke
  assert status == 0, "\n".join(lines)
  first, second = (os.path.join(root, "points", f"num_latents={n}_seed0") for n in (0, 4))
  for name in ("results.csv", "results.md", "vr_r1.png", "per_turn_vr_r1.png", "sweep.json"):
    assert os.path.isfile(os.path.join(root, name)), name
  assert "engine: 1 training for 2 runs; sft: 2 trainings for 2 runs" in "\n".join(lines)
  assert "start num_latents=4_seed0: trains sft; reuses engine from num_latents=0_seed0" in lines
  # The second run's engine checkpoint is the first's files (hard links), restored, not trained.
  engine = files_under(os.path.join(second, "checkpoints", "engine"))
  assert engine and engine == [f for f in files_under(os.path.join(first, "checkpoints", "engine"))
                               if f.startswith("30/")]
  for f in engine:
    a, b = (os.stat(os.path.join(w, "checkpoints", "engine", f)) for w in (first, second))
    assert a.st_ino == b.st_ino
  with open(os.path.join(second, "log.txt")) as f:
    log = f.read()
  assert "engine: restored checkpoint at step 30" in log and "engine: 30/30 steps" not in log
  # So is the data, generated once.
  meta = [os.stat(os.path.join(w, "data", "meta.json")).st_ino for w in (first, second)]
  assert meta[0] == meta[1]
  with open(os.path.join(root, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert {r["run"] for r in table} == {"num_latents=0_seed0", "num_latents=4_seed0"}
  assert {r["agent.num_latents"] for r in table} == {"0", "4"}
  assert {r["row"] for r in table} == {"engine_single_shot", "agent_sqr_stage1"}
  assert {r["turn"] for r in table if r["row"] == "agent_sqr_stage1"} == {"", "1", "2"}
  with open(os.path.join(root, "results.md")) as f:
    md = f.read()
  value = next(float(r["value"]) for r in table if r["run"] == "num_latents=4_seed0" and
               r["row"] == "agent_sqr_stage1" and r["metric"] == "vr_r1" and not r["turn"])
  assert "| num_latents=4 | 4 | 1 | " in md and f"{100 * value:.1f} ± –" in md


def test_rerun_skips_finished_runs(smoke):
  root, _, _ = smoke
  metrics = os.path.join(root, "points", "num_latents=0_seed0", "metrics.json")
  before = os.stat(metrics).st_mtime_ns
  lines = []
  assert sweep_lib.run_sweep(SOFT, root, out=lines.append) == 0
  assert any("2 finished (skipped), 0 to run" in l for l in lines)
  assert not any(l.startswith("start ") for l in lines)
  assert os.stat(metrics).st_mtime_ns == before


def test_reuse_links_the_stages_of_an_earlier_sweep(smoke, tmp_path):
  """--reuse: a later sweep whose stages have the keys of an earlier sweep's finished ones
  trains nothing (its data linked too) and evaluates to the same metrics."""
  donor, _, _ = smoke
  base = sweep_lib.read_file(SOFT)["base"]
  path = sweep_file(tmp_path, base=base, points=[{"agent.num_latents": 4}])
  root = str(tmp_path / "later")
  with pytest.raises(sweep_lib.SweepError, match=r"--reuse=.*nowhere: no sweep.json there"):
    sweep_lib.run_sweep(path, root, reuse=[str(tmp_path / "nowhere")])
  lines = []
  assert sweep_lib.run_sweep(path, root, reuse=[donor], out=lines.append) == 0, "\n".join(lines)
  start = [l for l in lines if l.startswith("start ")]
  assert len(start) == 1 and "trains nothing" in start[0], lines
  assert os.path.join(donor, "points", "num_latents=4_seed0") in start[0]
  assert any(l.startswith("data ") and "linked from" in l for l in lines), lines
  got, want = (os.path.join(r, "points", "num_latents=4_seed0", "metrics.json")
               for r in (root, donor))
  with open(got) as a, open(want) as b:
    assert json.load(a) == json.load(b)


def test_workdir_of_another_sweep_is_refused(smoke, tmp_path):
  root, _, _ = smoke
  other = os.path.join(REPO, "configs", "sweeps", "turns.py") + ":smoke"
  with pytest.raises(sweep_lib.SweepError, match=r"sweep.json records another sweep .*runs only "
                     r"there: num_latents=0_seed0, num_latents=4_seed0; runs only here: "
                     r"turns=1_seed0, turns=2_seed0"):
    sweep_lib.run_sweep(other, root)
  # The same points with another base override: the run and the flag are named.
  changed = sweep_file(tmp_path, config=SMOKE, base={"stages": ("engine", "sft"),
                                                     "sft.steps": 7},
                       points=[{"agent.num_latents": 0}, {"agent.num_latents": 4}])
  with pytest.raises(sweep_lib.SweepError) as e:
    sweep_lib.run_sweep(changed, root)
  assert "run num_latents=0_seed0:" in str(e.value) and "--config.sft.steps=7 here" in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("point, field, message", [
    ({"agent.num_latens": 4}, "agent.num_latens", r"did you mean .*agent.num_latents"),
    ({"agent.num_latents": "four"}, "agent.num_latents", r"expected a int, got str"),
    ({"agent.num_latents": 9}, "agent.num_latents", r"<= engine.text.num_slots \(4\)"),
])
def test_bad_point_fails_before_anything_runs(tmp_path, point, field, message):
  path = sweep_file(tmp_path, points=[{"agent.num_latents": 2}, ("bad", point)])
  root = tmp_path / "root"
  with pytest.raises(sweep_lib.SweepError, match=message) as e:
    sweep_lib.run_sweep(path, str(root))
  assert str(e.value).startswith(f"{path}: sweep point bad: ")
  assert field in str(e.value) and "\n" not in str(e.value)
  assert not root.exists()


def test_bad_sweep_files(tmp_path):
  with pytest.raises(sweep_lib.SweepError, match="unknown key.*pionts"):
    sweep_lib.build(sweep_file(tmp_path, "a", pionts=[{}]))
  with pytest.raises(sweep_lib.SweepError, match="two points are named 'x'"):
    sweep_lib.build(sweep_file(tmp_path, "b", points=[("x", {}), ("x", {"sft.steps": 3})]))
  with pytest.raises(sweep_lib.SweepError, match="point p: 'seed' comes from the sweep's seeds"):
    sweep_lib.build(sweep_file(tmp_path, "c", points=[("p", {"seed": 3})]))
  with pytest.raises(sweep_lib.SweepError, match="'config'.*does not exist"):
    sweep_lib.build(sweep_file(tmp_path, "d", config="nowhere.py", points=[{}]))


def test_merge_and_names():
  merged = sweep_lib.merge({"grpo.rewards.answer": 0.0, "seed": 1},
                           {"grpo.rewards": {"answer": 1.0}}, {"seed": 2})
  assert list(merged.items()) == [("grpo.rewards", {"answer": 1.0}), ("seed", 2)]
  assert sweep_lib.point_name({"agent.num_latents": 4, "stages": ("engine", "sft")}) == \
      "num_latents=4,stages=engine+sft"
  assert sweep_lib.point_name({}) == "base"


def test_dry_run_prints_one_command_per_run(tmp_path):
  root = tmp_path / "dry"
  out = subprocess.run([sys.executable, "-m", "vsr_jax.sweep", f"--sweep={SOFT}",
                        f"--workdir={root}", "--dry_run"], capture_output=True, text=True,
                       cwd=REPO, check=True).stdout
  lines = out.splitlines()
  assert len(lines) == 2 and not root.exists()
  sweep = sweep_lib.build(SOFT)
  for line, run in zip(lines, sweep.runs):
    argv = shlex.split(line)
    assert argv[:3] == [sys.executable, "-m", "vsr_jax.main"]
    assert f"--workdir={root}/points/{run.name}" in argv
    assert "--config.stages=(\"engine\", \"sft\")" in argv
    # Main's own flag parser gives the config the sweep validated.
    config = sweep_lib.parse_like_main(argv[3].partition("=")[2], argv[5:])
    assert config.agent.num_latents == run.config.agent.num_latents
    assert config.to_dict() == run.config.to_dict()


def test_failed_runs_are_reported_and_retried(tmp_path, capsys):
  # Both runs pass the checks and fail at start (no dataset there). They share the engine:
  # the second waits for the first, which fails, then trains it itself.
  missing = str(tmp_path / "no_data")
  point = {"data.source": "files", "data.dir": missing, "engine.train.source": "train"}
  path = sweep_file(tmp_path, points=[("p0", point), ("p1", point)])
  root = str(tmp_path / "root")
  lines = []
  assert sweep_lib.run_sweep(path, root, parallel=2, out=lines.append) == 1
  assert [l.split(":")[0].split(" (")[0] for l in lines if l.startswith(("start", "FAILED"))] == [
      "start p0_seed0", "FAILED p0_seed0", "start p1_seed0", "FAILED p1_seed0"]
  err = capsys.readouterr().err
  for name in ("p0_seed0", "p1_seed0"):
    assert f"FAILED {name} (exit status 1); last lines of" in err
  assert missing in err       # the log's tail names the missing dataset
  assert os.path.isfile(os.path.join(root, "results.md"))
  assert sweep_lib.run_sweep(path, root, parallel=2, out=lines.append) == 1
  with open(os.path.join(root, "points", "p0_seed0", "log.txt")) as f:
    assert f.read().count("=== ") == 2     # retried


def metrics(vr, mean_rank, turns):
  return {"vr_r1": vr, "mean_rank": mean_rank, "num_queries": 10.0,
          "per_turn": [{"vr_r1": t, "mean_rank": mean_rank} for t in turns]}


def test_results_table_on_hand_made_metrics(tmp_path):
  path = sweep_file(tmp_path, points=[{"agent.num_latents": n} for n in (1, 2)], seeds=(0, 1),
                    rows=("engine_single_shot", "agent_sqr_stage1"),
                    metrics=("vr_r1", "mean_rank"), plot_right="mean_rank")
  sweep = sweep_lib.build(path)
  root = tmp_path / "root"
  made = {"num_latents=1_seed0": (0.10, 3.0), "num_latents=1_seed1": (0.20, 5.0),
          "num_latents=2_seed0": (0.30, 2.0)}     # num_latents=2_seed1 did not finish
  for name, (vr, rank) in made.items():
    (root / "points" / name).mkdir(parents=True)
    (root / "points" / name / "metrics.json").write_text(json.dumps({
        "engine_single_shot": metrics(0.05, 9.0, [0.05]),
        "agent_sqr_stage1": metrics(vr, rank, [0.05, vr])}))
  sweep_lib.write_results(sweep, str(root))
  md = (root / "results.md").read_text()
  # vr_r1 of 10 % and 20 %: 15.0 ± 7.1 (ddof 1); one seed: '–'; mean_rank as it is, to
  # two decimals (a count per query such as turns_used needs them).
  assert "| num_latents=1 | 1 | 2 | 5.0 ± 0.0 | 15.0 ± 7.1 |" in md
  assert "| num_latents=2 | 2 | 1 | 5.0 ± – | 30.0 ± – |" in md
  assert "| num_latents=1 | 1 | 2 | 9.00 ± 0.00 | 4.00 ± 1.41 |" in md
  assert "3 of 4 runs finished" in md
  with open(root / "results.csv") as f:
    table = list(csv.DictReader(f))
  # 3 runs x 2 rows x 3 metrics, plus per turn: 3 x (1 + 2) turns x 2 metrics.
  assert len(table) == 3 * 2 * 3 + 3 * 3 * 2
  turn2 = [r for r in table if r["turn"] == "2" and r["metric"] == "vr_r1"]
  assert sorted(float(r["value"]) for r in turn2) == [0.1, 0.2, 0.3]
  cells = sweep_lib.stats(sweep, sweep_lib.load_results(sweep, str(root)), "vr_r1", turn=2)
  mean, std, n = cells["num_latents=1", "agent_sqr_stage1"]
  assert (round(mean, 6), round(std, 6), n) == (0.15, round(0.05 * 2 ** 0.5, 6), 2)
  # A metric a turn leaves out (ver_auc where one class is absent) is not counted there.
  results = sweep_lib.load_results(sweep, str(root))
  results["num_latents=1_seed0"]["agent_sqr_stage1"]["per_turn"][1]["ver_auc"] = 0.75
  cells = sweep_lib.stats(sweep, results, "ver_auc", turn=2)
  assert list(cells) == [("num_latents=1", "agent_sqr_stage1")]
  mean, _, n = cells["num_latents=1", "agent_sqr_stage1"]
  assert (mean, n) == (0.75, 1)
  assert (root / "vr_r1.png").stat().st_size > 0 and (root / "per_turn_vr_r1.png").exists()
  assert sweep.plot_right == "mean_rank"


def test_plot_right_draws_a_second_axis(tmp_path):
  """`plot_right`: the second metric on the right-hand axis of the same plot, dashed, each row
  in its colour on both axes; one more legend entry for the dashed lines."""
  from matplotlib import pyplot as plt   # pylint: disable=g-import-not-at-top
  path = sweep_file(tmp_path, points=[{"eval.turns": t} for t in (1, 2)],
                    rows=("engine_single_shot", "agent_sqr_stage1"),
                    metrics=("vr_r1", "turns_used"), plot_right="turns_used")
  sweep = sweep_lib.build(path)
  results = {"turns=1_seed0": {r: {"vr_r1": 0.1, "turns_used": 1.0} for r in sweep.rows},
             "turns=2_seed0": {r: {"vr_r1": 0.2, "turns_used": 1.5} for r in sweep.rows}}
  shown = []
  real_savefig = plt.Figure.savefig

  def keep(fig, *a, **k):
    shown.append(fig)
    return real_savefig(fig, *a, **k)

  plt.Figure.savefig = keep
  try:
    sweep_lib.plot(sweep, results, str(tmp_path))
  finally:
    plt.Figure.savefig = real_savefig
  left, right = shown[0].axes
  assert right.get_ylabel() == "turns_used (dashed)" and left.get_ylabel() == "vr_r1 (%)"
  assert [round(y, 6) for y in right.lines[0].get_ydata()] == [1.0, 1.5]   # as it is, not %
  assert [round(y, 6) for y in left.lines[0].get_ydata()] == [10.0, 20.0]
  assert right.lines[0].get_linestyle() == "--"
  assert [t.get_text() for t in left.get_legend().get_texts()] == [
      "engine_single_shot", "agent_sqr_stage1", "turns_used (dashed, right axis)"]
  bad = sweep_file(tmp_path, name="bad", points=[{"eval.turns": 1}], plot_right=("a", "b"))
  with pytest.raises(sweep_lib.SweepError, match="'plot_right' must be one metric"):
    sweep_lib.build(bad)


@pytest.mark.parametrize("name", sorted(
    f[:-3] for f in os.listdir(os.path.join(REPO, "configs", "sweeps")) if f.endswith(".py")))
def test_every_shipped_sweep_builds_at_every_preset(name):
  """Each configs/sweeps/ file resolves at each of its presets: every run's config validates
  and every point is a distinct run (nothing is trained or written)."""
  from vsr_jax import config_lib   # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "configs", "sweeps", name + ".py")
  own = rf"{name}\.py: unknown preset"    # the sweep file's own refusal, not its config's
  with pytest.raises(config_lib.InputError, match=own):
    sweep_lib.build(path + ":no_such_preset")
  for preset in ("default", "reduced", "smoke"):
    try:
      built = sweep_lib.build(f"{path}:{preset}")
    except config_lib.InputError as e:
      if re.search(own, str(e)):
        continue    # a sweep without this preset
      raise
    names = [r.name for r in built.runs]
    assert names and len(set(names)) == len(names), (name, preset)
