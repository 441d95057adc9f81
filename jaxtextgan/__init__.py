"""jaxtextgan: adversarial and discriminator-guided training of Transformer text models in JAX/Flax NNX."""

__version__ = "0.1.0"
