"""Kill-and-resume soak: a run killed with SIGKILL at random instants, resumed each time, must
end with the outputs of an uninterrupted run, byte for byte.

  python experiments/soak.py --workdir=DIR [--kills=25] [--seed=0] \
      [--config=configs/synthetic.py:smoke] [--damage=0.0]

1. DIR/reference: the config run once, uninterrupted (its wall time sets the kill window).
2. DIR/soak: the same command started again and again; each start is killed (SIGKILL, the
   whole process group) after a delay drawn uniformly from [0, the reference's wall time]
   (numpy's default_rng(seed)), until a start finishes before its kill: one round.
3. The round's outputs (metrics.json, tvr_submission.json, predictions/, submissions/) are
   compared with the reference's byte for byte; rounds repeat from scratch until N kills have
   landed (a resumed run is soon shorter than most delays, so one round lands only a few).

--damage=P: after each kill, with probability P, bytes in a random file of a random checkpoint
step are overwritten; the resumed run must then either recover from an intact checkpoint (the
same final outputs) or stop with the one-line "damaged" error (counted; the soak then deletes
that stage's checkpoints, as a user would, and goes on).

Prints the kills that landed, the damaged checkpoints recovered vs stopped cleanly, and whether
the outputs are identical; exits 1 if they are not.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("workdir", None, "Folder of the reference and soaked runs.")
flags.DEFINE_string("config", os.path.join(REPO, "configs", "synthetic.py") + ":smoke",
                    "Config file[:preset] of the run.")
flags.DEFINE_integer("kills", 25, "SIGKILLs to deliver.")
flags.DEFINE_integer("seed", 0, "Seed of the kill instants (and of the damage).")
flags.DEFINE_float("damage", 0.0, "Probability of damaging a checkpoint after a kill.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

OUTPUTS = ("metrics.json", "tvr_submission.json", "predictions", "submissions")


def command(config: str, workdir: str) -> list[str]:
  # The data goes next to the runs (one generation for both) so every start reads the same.
  return [sys.executable, "-m", "vsr_jax.main", f"--config={config}", f"--workdir={workdir}",
          f"--config.data.dir={os.path.join(os.path.dirname(workdir), 'data')}"]


def differences(a: str, b: str) -> list[str]:
  """Output files (relative paths) that differ between two workdirs, or exist in one only."""
  out = []
  for name in OUTPUTS:
    pa, pb = os.path.join(a, name), os.path.join(b, name)
    if os.path.isdir(pa) or os.path.isdir(pb):
      fa = sorted(os.listdir(pa)) if os.path.isdir(pa) else []
      fb = sorted(os.listdir(pb)) if os.path.isdir(pb) else []
      for f in sorted(set(fa) | set(fb)):
        if f not in fa or f not in fb or not filecmp.cmp(os.path.join(pa, f),
                                                         os.path.join(pb, f), shallow=False):
          out.append(os.path.join(name, f))
    elif not (os.path.isfile(pa) and os.path.isfile(pb)
              and filecmp.cmp(pa, pb, shallow=False)):
      out.append(name)
  return out


def damage_one(workdir: str, rng) -> str | None:
  """Overwrites 64 bytes in the middle of a random file of the latest step of a random
  checkpoint folder (the step a resumed start restores)."""
  root = os.path.join(workdir, "checkpoints")
  latest = []
  for loop in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    steps = [int(d) for d in os.listdir(os.path.join(root, loop)) if d.isdigit()]
    if steps and not loop.endswith(".damaged"):
      latest.append(os.path.join(root, loop, str(max(steps))))
  if not latest:
    return None
  step = latest[rng.integers(len(latest))]
  files = sorted(os.path.join(r, f) for r, _, fs in os.walk(step) for f in fs
                 if os.path.getsize(os.path.join(r, f)) > 0)
  if not files:
    return None
  path = files[rng.integers(len(files))]
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    f.write(rng.bytes(min(64, size - size // 2)))
  return path


def run(cmd: list[str], timeout: float | None = None):
  """(return code or None if killed at `timeout`, stderr tail)."""
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  try:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err[-2000:]
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    return None, ""


def main(argv):
  del argv
  rng = np.random.default_rng(FLAGS.seed)
  ref, soak = (os.path.join(FLAGS.workdir, n) for n in ("reference", "soak"))
  timing = os.path.join(FLAGS.workdir, "reference_seconds.txt")
  if not (os.path.isfile(os.path.join(ref, "metrics.json")) and os.path.isfile(timing)):
    shutil.rmtree(ref, ignore_errors=True)
    start = time.perf_counter()
    code, err = run(command(FLAGS.config, ref))
    if code != 0:
      raise SystemExit(f"the reference run failed ({code}): {err}")
    with open(timing, "w") as f:
      f.write(f"{time.perf_counter() - start:.1f}\n")
  with open(timing) as f:
    window = float(f.read())      # the kill window: an uninterrupted run's wall time
  print(f"reference: {window:.0f} s")
  totals = {"landed": 0, "damaged": 0, "recovered": 0, "stopped": 0}
  rounds, failed = 0, []
  while totals["landed"] < FLAGS.kills:
    rounds += 1
    got = soak_round(soak, window, rng, FLAGS.kills - totals["landed"])
    for key in totals:
      totals[key] += got[key]
    diff = differences(ref, soak)
    print(f"round {rounds}: {got['landed']} kills landed; outputs "
          + ("identical" if not diff else f"DIFFER: {diff}"), flush=True)
    if diff:
      failed.append(rounds)
      shutil.copytree(soak, f"{soak}.round{rounds}")   # kept for a look
    if rounds >= 4 * FLAGS.kills:
      break                      # every start finishes before its kill: stop trying
  print(f"seed {FLAGS.seed}: {totals['landed']} kills landed of {FLAGS.kills} over {rounds} "
        f"run(s) to completion; {totals['damaged']} checkpoints damaged: "
        f"{totals['recovered']} found and resumed from an earlier step, {totals['stopped']} "
        f"stopped with the 'damaged' error (its checkpoints deleted, retrained), the rest "
        f"overwritten before any start read them; outputs "
        + ("identical to the uninterrupted run in every round" if not failed
           else f"DIFFER in round(s) {failed}"))
  sys.exit(1 if failed else 0)


def soak_round(soak: str, window: float, rng, kills: int) -> dict:
  """One run from scratch to completion in `soak`, killed at up to `kills` instants (each
  start after a delay drawn from [0, window]; a start that finishes first ends the round)."""
  shutil.rmtree(soak, ignore_errors=True)
  landed = damaged = stopped = 0
  while landed < kills:
    code, err = run(command(FLAGS.config, soak), timeout=float(rng.uniform(0, window)))
    if code is not None:
      if code != 0 and "damaged" in err:
        stopped += 1
        shutil.rmtree(os.path.join(soak, "checkpoints"))      # what a user does: retrain
        continue
      if code != 0:
        raise SystemExit(f"a resumed start failed ({code}): {err}")
      break                      # finished before its kill
    landed += 1
    if FLAGS.damage and rng.uniform() < FLAGS.damage and damage_one(soak, rng):
      damaged += 1
  while True:
    code, err = run(command(FLAGS.config, soak))
    if code == 0:
      break
    if "damaged" not in err:
      raise SystemExit(f"the final start failed ({code}): {err}")
    stopped += 1
    shutil.rmtree(os.path.join(soak, "checkpoints"))
  # Damaged steps a start found, moved aside and resumed before (checkpoints/<loop>.damaged/).
  root = os.path.join(soak, "checkpoints")
  recovered = sum(len(os.listdir(os.path.join(root, d))) for d in os.listdir(root)
                  if d.endswith(".damaged")) if os.path.isdir(root) else 0
  return {"landed": landed, "damaged": damaged, "recovered": recovered, "stopped": stopped}


if __name__ == "__main__":
  app.run(main)
