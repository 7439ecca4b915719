"""vsr_jax: VideoSearch-R1 (iterative video retrieval with Soft Query Refinement) in JAX."""
import setuptools

# Compatible ranges: the lower bound is the version the test suite runs with (requirements.txt,
# Python 3.11), the upper bound the next minor (0.x JAX-ecosystem packages) or major release.
# A test subset also passes with jax/jaxlib 0.12.0.1 and flax 0.12.12 on Python 3.12 (README).
# requirements.txt keeps the exact pins of the reproducible install that `make` uses.
setuptools.setup(
    name="vsr_jax",
    version="0.1.0",
    description="VideoSearch-R1 in JAX: the multi-turn VCMR episode as one compiled program.",
    packages=setuptools.find_packages(include=["vsr_jax", "vsr_jax.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=[
        "jax>=0.10.2,<0.13",   # jax >= 0.11 needs Python >= 3.12; 3.11 gets 0.10.x
        "jaxlib>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        # ScaNN ships Linux wheels only (x86-64, aarch64); elsewhere config.index.backend='exact'.
        "scann>=1.4.2,<1.5; sys_platform == 'linux'",
        "tensorflow-datasets>=4.9.10,<5",
        # The TFDS datasets' file format; wheels for Linux and macOS (arm64), none for Windows.
        "array_record>=0.8.6,<0.9; sys_platform == 'linux' or sys_platform == 'darwin'",
        "importlib_resources>=7.1.0,<8",
        "einops>=0.8.2,<1",
        "absl-py>=2.5.1,<3",
        "ml_collections>=1.1.0,<2",
        "numpy>=2.4.6,<3",
        "tensorboardX>=2.6.5,<3",
        "h5py>=3.16.0,<4",
        "tokenizers>=0.23.3,<1",
        "safetensors>=0.8.0,<1",
        "matplotlib>=3.11.2,<4",
    ],
    extras_require={
        # The notebook (experiments/inspect_run.ipynb) runs in the test suite through nbclient.
        "test": ["pytest>=9.2.0,<10", "pytest-xdist>=3.8.0,<4", "hypothesis>=6.170,<7",
                 "nbclient>=0.11.0,<0.12",
                 "nbformat>=5.11.1,<6", "ipykernel>=7.4.0,<8"],
        # JAX's own accelerator extras (pip install -e .[cuda] / .[cuda12] / .[tpu]).
        "cuda": ["jax[cuda13]"],   # NVIDIA GPU, CUDA 13 wheels (JAX's recommended GPU install)
        "cuda12": ["jax[cuda12]"],   # NVIDIA GPU with a driver too old for CUDA 13
        "tpu": ["jax[tpu]"],   # Cloud TPU VM
    },
)
