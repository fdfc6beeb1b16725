"""Layer 5, training: the tiny testbed, RL runs through TRL, the live acceleration callback, optimizer-side lookahead."""
