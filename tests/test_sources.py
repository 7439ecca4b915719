"""Tests for vsr_jax.data.sources: dataset sources by name (data.source)."""
import os

import pytest

from vsr_jax import config_lib, registry
from vsr_jax.config_lib import ConfigError
from vsr_jax.data import sources, store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def test_the_built_in_sources_are_registered():
  assert {"synthetic", "files", "tfds"} <= set(registry.DATASETS.names())
  with pytest.raises(ConfigError, match=r"config.data.source='hdf5': no dataset source"):
    registry.DATASETS.get("hdf5", "data.source")


def test_synthetic_then_files_read_the_same_split(tmp_path):
  """The synthetic source generates into <workdir>/data; the files source reads that folder."""
  config = config_lib.load(SMOKE)
  tok, splits = sources.load_data(config, str(tmp_path), splits=("test",))
  assert sources.data_dir(config, str(tmp_path)) == str(tmp_path / "data")
  files = config_lib.load(SMOKE, {"data.source": "files", "data.dir": str(tmp_path / "data"),
                                  "engine.train.source": "train"})
  tok2, again = sources.load_data(files, "/unused", splits=("test",))
  assert len(tok2) == len(tok)
  assert (again["test"].tokens == splits["test"].tokens).all()


def test_files_source_without_its_directory_names_it(tmp_path):
  config = config_lib.load(SMOKE, {"data.source": "files", "data.dir": str(tmp_path / "none"),
                                   "engine.train.source": "train"})
  with pytest.raises(store.DatasetError, match=r"data.dir='.*none': no such directory"):
    sources.load_data(config, str(tmp_path))


def test_prepare_makes_the_data_once_and_load_only_reads_it(tmp_path):
  """prepare_data generates the synthetic benchmark (what a multi-host run's process 0 does
  alone); a second prepare and the files source find it made, and the files source has
  nothing to prepare."""
  config = config_lib.load(SMOKE)
  where = tmp_path / "data"
  sources.prepare_data(config, str(tmp_path))
  made = sorted(os.listdir(where / "features"))
  assert made and os.path.isfile(where / "meta.json")
  stamp = os.path.getmtime(where / "meta.json")
  sources.prepare_data(config, str(tmp_path))
  assert os.path.getmtime(where / "meta.json") == stamp
  files = config_lib.load(SMOKE, {"data.source": "files", "data.dir": str(where),
                                  "engine.train.source": "train"})
  assert registry.DATASETS.get("files").prepare is None
  sources.prepare_data(files, "/unused")                      # nothing to make
  _, splits = sources.load_data(files, "/unused", splits=("test",))
  assert splits["test"].num_videos > 0
