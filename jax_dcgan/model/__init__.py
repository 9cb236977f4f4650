"""The lecture's DCGAN: torch-exact layers, the generator and discriminator, the training
step (pure, wrapped for jit and pmap) and the PyTorch state-dict mapping."""
