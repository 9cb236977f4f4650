"""How good the samples are: SWD, FID and KID (FID's Inception network in JAX), diversity."""
