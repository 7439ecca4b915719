"""Tests for vsr_jax.workdir: config.json checks, checkpoints, publishing outputs."""
import errno
import json
import os
import shutil

import pytest

from vsr_jax import config_lib, workdir
from vsr_jax.workdir import WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"

def smoke(**overrides):
  return config_lib.load(SMOKE, {k: str(v) for k, v in overrides.items()})


# ----------------------------------------------------------------------------- prepare


def test_prepare_writes_config_json(tmp_path):
  wd = str(tmp_path / "run")
  config = smoke()
  workdir.prepare(config, wd, mode="train")
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f) == config_lib.to_dict(config)
  assert os.listdir(wd) == ["config.json"]               # no temporary file left
  workdir.prepare(smoke(), wd, mode="train")            # same config: fine
  workdir.prepare(smoke(), wd, mode="eval")


def test_check_writes_nothing_and_names_a_workdir_it_cannot_use(tmp_path):
  wd = str(tmp_path / "a" / "run")
  workdir.check(smoke(), wd, mode="train")
  assert not os.path.exists(tmp_path / "a")              # nothing claimed yet
  (tmp_path / "file").write_text("x")
  with pytest.raises(WorkdirError, match="is a file, not a directory"):
    workdir.check(smoke(), str(tmp_path / "file"), mode="train")
  with pytest.raises(WorkdirError, match="is a file, not a directory"):
    workdir.claim(smoke(), str(tmp_path / "file"))
  if os.geteuid() != 0:            # root writes anywhere: the permission check cannot fail
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(WorkdirError, match="is not a writable directory"):
      workdir.check(smoke(), str(locked / "run"), mode="train")
  workdir.claim(smoke(), wd)
  assert os.listdir(wd) == ["config.json"]


@pytest.mark.parametrize("field, value", [("seed", 1), ("data.synthetic.noise", 0.1),
                                          ("engine.train.fine_keep", 0.9)])
def test_prepare_rejects_a_different_config(tmp_path, field, value):
  wd = str(tmp_path)
  workdir.prepare(smoke(), wd, mode="train")
  for mode in ("train", "eval"):
    with pytest.raises(WorkdirError) as e:
      workdir.prepare(smoke(**{field: value}), wd, mode=mode)
    assert f": {field} differ from {os.path.join(wd, 'config.json')}" in str(e.value)


def test_prepare_names_only_the_fixed_fields(tmp_path):
  workdir.prepare(smoke(), str(tmp_path), mode="train")
  with pytest.raises(WorkdirError) as e:
    workdir.prepare(smoke(**{"seed": 2, "eval.batch_size": 8}), str(tmp_path), mode="train")
  assert ": seed differ" in str(e.value)
  assert "eval.batch_size" not in str(e.value)


def test_prepare_allows_mutable_sections(tmp_path):
  wd = str(tmp_path)
  config = smoke()
  workdir.prepare(config, wd, mode="train")
  changed = smoke(**{"eval.batch_size": 8, "index.backend": "scann", "log.every_steps": 3,
                     "mesh.data": 2, "checkpoint.max_to_keep": 5})
  workdir.prepare(changed, wd, mode="eval")
  workdir.prepare(changed, wd, mode="train")
  with open(os.path.join(wd, "config.json")) as f:     # the original stays the reference
    assert json.load(f) == config_lib.to_dict(config)


def test_prepare_eval_without_config(tmp_path):
  with pytest.raises(WorkdirError, match="has no config.json"):
    workdir.prepare(smoke(), str(tmp_path / "never_trained"), mode="eval")


def test_prepare_corrupt_config_json(tmp_path):
  path = tmp_path / "config.json"
  path.write_text('{"seed": 0, "data": {')
  with pytest.raises(WorkdirError) as e:
    workdir.prepare(smoke(), str(tmp_path), mode="train")
  assert str(path) in str(e.value) and "corrupt JSON" in str(e.value)


# ----------------------------------------------------------------------------- publish


def make_staging(wd):
  staging = workdir.staging_dir(wd)
  with open(os.path.join(staging, "metrics.json"), "w") as f:
    json.dump({"r1": 0.5}, f)
  with open(os.path.join(staging, "tvr_submission.json"), "w") as f:
    f.write("new")
  os.makedirs(os.path.join(staging, "predictions"))
  with open(os.path.join(staging, "predictions", "row.jsonl"), "w") as f:
    f.write("new")
  return staging


def old_outputs(wd):
  with open(os.path.join(wd, "metrics.json"), "w") as f:
    json.dump({"r1": 0.1}, f)
  with open(os.path.join(wd, "tvr_submission.json"), "w") as f:
    f.write("old")
  os.makedirs(os.path.join(wd, "predictions"))
  with open(os.path.join(wd, "predictions", "stale.jsonl"), "w") as f:
    f.write("old")


def test_staging_dir_is_fresh(tmp_path):
  staging = make_staging(str(tmp_path))
  assert staging == os.path.join(str(tmp_path), ".staging")
  assert workdir.staging_dir(str(tmp_path)) == staging
  assert os.listdir(staging) == []


def test_publish_moves_outputs_metrics_last(tmp_path, monkeypatch):
  wd = str(tmp_path)
  old_outputs(wd)
  staging = make_staging(wd)
  events = []
  real_replace, real_remove = os.replace, os.remove
  monkeypatch.setattr(os, "replace",
                      lambda a, b: (events.append(("replace", os.path.basename(b))),
                                    real_replace(a, b))[1])
  monkeypatch.setattr(os, "remove",
                      lambda p: (events.append(("remove", os.path.basename(p))),
                                 real_remove(p))[1])
  workdir.publish(wd, staging)
  assert events[0] == ("replace", workdir.JOURNAL)          # the journal (write_json)
  assert events[1] == ("remove", "metrics.json")
  assert events[-2] == ("replace", "metrics.json")
  assert events[-1] == ("remove", workdir.JOURNAL)
  assert sorted(events[2:-2]) == [("replace", "predictions"),
                                  ("replace", "tvr_submission.json")]
  assert not os.path.exists(staging)
  with open(os.path.join(wd, "metrics.json")) as f:
    assert json.load(f) == {"r1": 0.5}
  assert open(os.path.join(wd, "tvr_submission.json")).read() == "new"
  assert os.listdir(os.path.join(wd, "predictions")) == ["row.jsonl"]   # old dir replaced


def test_crash_during_publish_leaves_no_metrics(tmp_path, monkeypatch):
  wd = str(tmp_path)
  old_outputs(wd)
  staging = make_staging(wd)
  real_replace = os.replace

  def failing_replace(a, b):
    if os.path.basename(b) == "tvr_submission.json":
      raise OSError("crash (simulated)")
    return real_replace(a, b)

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(OSError, match="simulated"):
    workdir.publish(wd, staging)
  # The stale metrics.json is gone: a mix of old and new outputs is never taken as complete.
  assert not os.path.exists(os.path.join(wd, "metrics.json"))


def _outputs(wd) -> dict:
  """Every output file of a workdir (relative path -> content), staging and journal aside."""
  out = {}
  for root, dirs, files in os.walk(wd):
    dirs[:] = [d for d in dirs if d != ".staging"]
    for f in files:
      if not f.startswith(workdir.JOURNAL):    # the journal, or its temporary file
        path = os.path.join(root, f)
        out[os.path.relpath(path, wd)] = open(path).read()
  return out


def test_a_kill_at_any_instant_of_publish_leaves_one_complete_set(tmp_path, monkeypatch):
  """Killed at each of publish's file operations in turn (injected): the workdir holds the
  old complete set, or, after recover (what the next start does), the new one."""
  def fresh(wd):
    old_outputs(wd)
    staging = make_staging(wd)
    return staging

  reference = str(tmp_path / "ref")
  os.makedirs(reference)
  fresh(reference)
  old_set = {k: v for k, v in _outputs(reference).items()}
  workdir.publish(reference, os.path.join(reference, ".staging"))
  new_set = _outputs(reference)
  assert new_set != old_set

  class Killed(BaseException):
    pass

  real = {name: getattr(os, name) for name in ("replace", "remove")}
  real_rmtree = shutil.rmtree
  kills = 0
  for k in range(20):
    wd = str(tmp_path / f"k{k}")
    os.makedirs(wd)
    staging = fresh(wd)
    calls = [0]

    def counting(fn):
      def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k + 1:
          raise Killed()
        return fn(*args, **kwargs)
      return wrapped

    for name, fn in real.items():
      monkeypatch.setattr(os, name, counting(fn))
    monkeypatch.setattr(shutil, "rmtree", counting(real_rmtree))
    try:
      workdir.publish(wd, staging)
      done = True
    except Killed:
      done = False
    finally:
      monkeypatch.undo()
    if done:
      break
    kills += 1
    after_kill = _outputs(wd)
    if "metrics.json" in after_kill:      # metrics present: a complete set, old or new
      assert after_kill in (old_set, new_set), k
    workdir.recover(wd)
    assert _outputs(wd) in (old_set, new_set), k
    assert not [f for f in os.listdir(wd) if f.startswith(workdir.JOURNAL)]
    assert workdir.staging_dir(wd)                    # a later evaluation can stage again
  assert kills >= 6                                   # every operation of publish was hit


def test_publish_into_an_empty_workdir(tmp_path):
  wd = str(tmp_path)
  staging = make_staging(wd)
  workdir.publish(wd, staging)
  assert sorted(os.listdir(wd)) == ["metrics.json", "predictions", "tvr_submission.json"]


def test_write_json_is_atomic(tmp_path):
  path = str(tmp_path / "x.json")
  workdir.write_json(path, {"a": [1, 2]})
  assert workdir.read_json(path) == {"a": [1, 2]}
  assert os.listdir(tmp_path) == ["x.json"]


def test_write_json_that_fails_names_its_file_and_leaves_nothing(tmp_path, monkeypatch):
  """A full disk fails the buffered write with an OSError that names no file: write_json
  names its temporary file (the full-disk line reports it), removes it and leaves the
  previous file as it was."""
  path = str(tmp_path / "x.json")
  workdir.write_json(path, {"old": 1})

  def full(value, f, **kw):
    f.write("{\"half\": ")
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(json, "dump", full)
  with pytest.raises(OSError) as e:
    workdir.write_json(path, {"new": 2})
  assert e.value.filename == f"{path}.tmp-{os.getpid()}"
  assert workdir.disk_full(e.value) == e.value.filename
  assert os.listdir(tmp_path) == ["x.json"]
  assert workdir.read_json(path) == {"old": 1}


def test_read_config_fills_fields_added_since_the_run(tmp_path):
  from vsr_jax import defaults
  saved = config_lib.to_dict(defaults.base_config())
  saved["agent"]["width"] = 64
  del saved["agent"]["sqr_head"]                       # a field the run's code did not have
  os.makedirs(tmp_path / "run")
  workdir.write_json(str(tmp_path / "run" / "config.json"), saved)
  config = workdir.read_config(str(tmp_path / "run"))
  assert config.agent.width == 64                      # the run's value
  assert config.agent.sqr_head == defaults.base_config().agent.sqr_head
  # A field whose default changes what the run's checkpoints mean: the value runs had before.
  del saved["agent"]["span_prior"]
  workdir.write_json(str(tmp_path / "run" / "config.json"), saved)
  assert defaults.base_config().agent.span_prior > 0
  assert workdir.read_config(str(tmp_path / "run")).agent.span_prior == 0.0
  saved["agent"]["span_prior"] = 2.0                    # a run that had it keeps its value
  workdir.write_json(str(tmp_path / "run" / "config.json"), saved)
  assert workdir.read_config(str(tmp_path / "run")).agent.span_prior == 2.0
  assert isinstance(config.stages, tuple)
  with pytest.raises(AttributeError):
    config.new_field = 1                             # locked
  with pytest.raises(WorkdirError, match="config.json not found"):
    workdir.read_config(str(tmp_path / "nothing"))


def test_prepare_for_eval_allows_what_evaluation_reads(tmp_path):
  wd = str(tmp_path)
  workdir.prepare(smoke(), wd, mode="train")
  workdir.prepare(smoke(**{"data.eval_split": "val", "eval.turns": 3}), wd, mode="eval")
  with pytest.raises(WorkdirError, match="data.dir"):
    workdir.prepare(smoke(**{"data.dir": "/elsewhere"}), wd, mode="eval")
  with pytest.raises(WorkdirError, match="data.eval_split"):      # training reads it there
    workdir.prepare(smoke(**{"data.eval_split": "val"}), wd, mode="train")


def test_disk_full_reads_the_exception_chain():
  import errno   # pylint: disable=g-import-not-at-top
  assert workdir.disk_full(ValueError("shape mismatch")) is None
  assert workdir.disk_full(OSError(errno.ENOSPC, "No space left on device", "/w/a")) == "/w/a"
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/ck/_sharding": Failed')
  try:
    try:
      raise orbax
    except ValueError:
      raise OSError(errno.ENOSPC, "No space left on device")   # flushing on the way out
  except OSError as e:
    assert workdir.disk_full(e) == "/w/ck/_sharding"       # the one that names a path
  assert workdir.disk_full(OSError(errno.ENOSPC, "No space left on device")) == ""
  assert workdir.disk_full(OSError(errno.EACCES, "Permission denied", "/w")) is None


def test_attach_log_takes_background_failures_off_the_terminal(tmp_path):
  import logging as py_logging   # pylint: disable=g-import-not-at-top
  import threading   # pylint: disable=g-import-not-at-top
  import sys   # pylint: disable=g-import-not-at-top
  old_hook, old_unraisable = threading.excepthook, sys.unraisablehook
  path = workdir.attach_log(str(tmp_path))
  try:
    def fail():
      raise RuntimeError("saver thread broke")
    t = threading.Thread(target=fail, name="saver")
    t.start()
    t.join()
    for h in py_logging.getLogger().handlers:
      h.flush()
    with open(path, encoding="utf-8") as f:
      text = f.read()
    assert "thread saver failed" in text and "RuntimeError: saver thread broke" in text
    record = py_logging.LogRecord(workdir.BACKGROUND, py_logging.ERROR, "x.py", 1, "m",
                                  None, None)
    assert workdir.is_background(record)
    record = py_logging.LogRecord("absl", py_logging.ERROR, "/vsr_jax/train.py", 1, "m",
                                  None, None)
    assert not workdir.is_background(record)
  finally:
    for h in list(py_logging.getLogger().handlers):
      if isinstance(h, workdir._LogFile):   # pylint: disable=protected-access
        py_logging.getLogger().removeHandler(h)
        h.close()
    threading.excepthook, sys.unraisablehook = old_hook, old_unraisable


def test_warnings_to_log_keeps_exit_warnings_off_the_terminal(tmp_path, capsys):
  import logging as py_logging   # pylint: disable=g-import-not-at-top
  import threading   # pylint: disable=g-import-not-at-top
  import sys   # pylint: disable=g-import-not-at-top
  import warnings   # pylint: disable=g-import-not-at-top
  old = threading.excepthook, sys.unraisablehook, warnings.showwarning
  path = workdir.attach_log(str(tmp_path))
  try:
    workdir.warnings_to_log()
    with warnings.catch_warnings():
      warnings.simplefilter("always")
      warnings.warn("coroutine 'write_fragment' was never awaited", RuntimeWarning)
    for h in py_logging.getLogger().handlers:
      h.flush()
    with open(path, encoding="utf-8") as f:
      assert "RuntimeWarning: coroutine 'write_fragment' was never awaited" in f.read()
    assert "never awaited" not in capsys.readouterr().err
  finally:
    for h in list(py_logging.getLogger().handlers):
      if isinstance(h, workdir._LogFile):   # pylint: disable=protected-access
        py_logging.getLogger().removeHandler(h)
        h.close()
    threading.excepthook, sys.unraisablehook, warnings.showwarning = old
