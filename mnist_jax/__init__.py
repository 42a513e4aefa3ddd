"""mnist_jax: recurrent networks on MNIST-format digits, in JAX and Flax linen."""

__version__ = "0.1.0"
