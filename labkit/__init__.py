"""labkit: helpers for the post-training lab notebooks."""
