"""The command line: bad configs and workdirs end with one clear error line."""

import json
import os
import subprocess
import sys

import pytest

from vsr_jax import config_lib
from vsr_jax.data import store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def cli(*args, cwd=REPO):
  proc = subprocess.run([sys.executable, "-m", "vsr_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stderr


def test_unknown_preset(tmp_path):
  code, err = cli("--config=configs/synthetic.py:smokee", f"--workdir={tmp_path}")
  assert code != 0
  assert "unknown preset 'smokee'" in err and "did you mean 'smoke'" in err
  assert "Traceback" not in err


def test_misspelt_field(tmp_path):
  code, err = cli("--config=configs/synthetic.py:smoke", "--config.engine.train.step=3",
                  f"--workdir={tmp_path}")
  assert code != 0
  assert "no field 'step'" in err and "--config.engine.train.steps" in err


def test_bad_value_type(tmp_path):
  code, err = cli("--config=configs/synthetic.py:smoke", "--config.engine.train.steps=many",
                  f"--workdir={tmp_path}")
  assert code != 0 and "expected a int" in err


def test_invalid_value_named(tmp_path):
  code, err = cli("--config=configs/synthetic.py:smoke", "--config.engine.train.fine_keep=2.0",
                  f"--workdir={tmp_path}")
  assert code != 0 and "config.engine.train.fine_keep=2.0: expected in [0, 1]" in err


def test_a_bad_config_is_refused_before_joining_the_other_processes(tmp_path):
  """No process 1 exists and the timeout is 0: without the check first this would wait to
  join (or fail inside jax) instead of naming the field."""
  code, err = cli("--config=configs/synthetic.py:smoke", "--config.mesh.init_timeout_s=0",
                  "--coordinator=127.0.0.1:1", "--num_processes=2", "--process_id=0",
                  f"--workdir={tmp_path}")
  assert code != 0 and "config.mesh.init_timeout_s=0: expected >= 1 (seconds)" in err
  assert "Traceback" not in err and not os.listdir(tmp_path)


def test_a_run_that_fails_on_its_input_does_not_claim_the_workdir(tmp_path):
  """The data is read and checked before config.json is written: the corrected command (here
  another data.dir, a field that decides what is trained) may use the same workdir."""
  wd = tmp_path / "run"
  code, err = cli("--config=configs/synthetic.py:smoke", "--config.data.source=files",
                  f"--config.data.dir={tmp_path / 'nope'}", "--config.engine.train.source=train",
                  f"--workdir={wd}")
  assert code != 0 and "nope" in err and "no such directory" in err
  assert "Traceback" not in err
  assert not os.path.exists(wd / "config.json")


def test_missing_config_file(tmp_path):
  code, err = cli("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert code != 0 and "configs/nope.py" in err and "does not exist" in err


def test_workdir_of_another_run(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"seed": 1}))
  code, err = cli("--config=configs/synthetic.py:smoke", f"--workdir={workdir}")
  assert code != 0 and "holds a run of a different config" in err


def test_eval_of_an_empty_workdir(tmp_path):
  code, err = cli("--config=configs/synthetic.py:smoke", f"--workdir={tmp_path / 'none'}",
                  "--mode=eval")
  assert code != 0 and "has no config.json" in err
  assert not (tmp_path / "none").exists()


def test_corrupt_config_json(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": ')
  code, err = cli("--config=configs/synthetic.py:smoke", f"--workdir={tmp_path}")
  assert code != 0 and "config.json: corrupt JSON" in err


def _small_disk(path, size):
  """A tmpfs of `size` at path (root only: the test skips where it cannot mount one)."""
  os.makedirs(path)
  if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                          "tmpfs", path], capture_output=True).returncode:
    pytest.skip("mounting a small tmpfs needs root")


def test_a_full_disk_is_one_line_and_its_tracebacks_go_to_the_log(tmp_path):
  """The workdir's disk fills during the first checkpoint save: Orbax's background threads
  fail, TensorBoard cannot flush; the terminal gets one line naming the workdir and the file
  being written, every traceback goes to <workdir>/log.txt, and the intact checkpoint before
  it stays."""
  data_dir = str(tmp_path / "data")
  store.write_synthetic(config_lib.load(SMOKE).data, data_dir)
  disk = str(tmp_path / "disk")
  _small_disk(disk, "600k")
  try:
    workdir = os.path.join(disk, "run")
    proc = subprocess.run([sys.executable, "-m", "vsr_jax.main", f"--config={SMOKE}",
                           f"--config.data.dir={data_dir}", f"--workdir={workdir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if not l.startswith(("I1", "W1"))]
    assert len(lines) == 1, "\n".join(lines[-40:])
    head = f"error: no space left on the disk of --workdir={workdir}"
    assert lines[0].startswith(head), lines[0]
    # The file being written when the failed write names one; which write fails first is
    # timing (Orbax's threads or a buffered write, whose error carries no file name).
    rest = lines[0][len(head):]
    assert rest.startswith((f" (writing {workdir}/", ": free space")), lines[0]
    assert "resumes from the newest intact checkpoint" in lines[0]
    with open(os.path.join(workdir, "log.txt"), encoding="utf-8") as f:
      log = f.read()
    assert "Traceback" in log and "No space left on device" in log
    assert os.path.isfile(os.path.join(workdir, "config.json"))
  finally:
    subprocess.run(["umount", disk], check=False)
