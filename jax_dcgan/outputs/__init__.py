"""What a run shows: samples and grids, the loss and quality plots, progress.webp, the latent
walk, real beside fake."""
