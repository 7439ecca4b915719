"""Training stages, registered by name (config.stages): engine (0), sft and sft_hqr (1), grpo (2).

Each module here builds its stage's state, step, batches and restore; a new stage is one new
module (it registers itself: `registry.STAGES.register(name, MyStage())`) plus its config.
"""

from vsr_jax.stages.base import (Context, Loop, NonFiniteError, Stage, available, finished,
                                 folder_owner, load_params, parse_checkpoint, run_loop,
                                 stage_key, stage_keys)
