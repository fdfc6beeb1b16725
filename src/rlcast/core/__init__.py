"""Layer 2, numerical core: spectra, the cached rank-1 trajectories, and the numerics every method shares."""
