"""vsr_jax: VideoSearch-R1 (retrieve -> verify -> refine -> ground) in JAX.

Package layout, imports flowing one way:
  data -> engine -> agent -> rollout -> objectives -> train / evaluate.
"""
