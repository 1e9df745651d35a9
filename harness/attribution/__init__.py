"""Where outliers live: tokens and positions, massive activations, MoE experts; observers of the one forward pass."""
