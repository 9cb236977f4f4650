"""jax-dcgan: the DCGAN of STAT 453 lecture L18.6, exact against PyTorch and fast in JAX.

Importing the package is cheap (no JAX import): the data workers and the command
line's error paths rely on that.
"""

__version__ = "0.2.0"
