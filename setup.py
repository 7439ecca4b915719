"""vsr_jax: VideoSearch-R1 (iterative video retrieval with Soft Query Refinement) in JAX."""
import setuptools

setuptools.setup(
    name="vsr_jax",
    version="0.1.0",
    description="VideoSearch-R1 in JAX: the multi-turn VCMR episode as one compiled program.",
    packages=setuptools.find_packages(include=["vsr_jax", "vsr_jax.*"]),
    python_requires=">=3.11,<3.12",
    # Direct dependencies; requirements.txt pins the whole resolved set.
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "scann==1.4.2",
        "tensorflow-datasets==4.9.10",
        "array_record==0.8.6",
        "importlib_resources==7.1.0",
        "einops==0.8.2",
        "absl-py==2.5.1",
        "ml_collections==1.1.0",
        "numpy==2.4.6",
        "tensorboardX==2.6.5",
        "h5py==3.16.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "matplotlib==3.11.2",
    ],
    # The notebook (experiments/inspect_run.ipynb) runs in the test suite through nbclient.
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "nbclient==0.11.0",
                             "nbformat==5.11.1", "ipykernel==7.4.0"]},
)
