"""What every layer uses: errors with one-paragraph messages, atomic file writes, optional
imports (torch, tfds, tensorboardX) and the JAX process set-up (threads, caches, float64)."""
