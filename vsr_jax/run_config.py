"""A trained run's own config as a config file: `--config=vsr_jax/run_config.py:RUN` is the
run's config.json over today's defaults (workdir.read_config), so that `--config.a.b=value`
overrides apply to it. `--mode=eval` uses it when no --config is given."""

from vsr_jax import workdir


def get_config(run_dir):
  config = workdir.read_config(run_dir)
  config.unlock()      # config_flags locks it again after loading
  return config
