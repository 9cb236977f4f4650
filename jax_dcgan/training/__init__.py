"""The training loop and what it runs on: the dispatch plan, the batch feed, data parallelism,
several hosts, checkpoints, the run directory, the metric writers and each epoch's outputs."""
