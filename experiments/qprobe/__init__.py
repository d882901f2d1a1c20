"""Q-probes (Li et al. 2024): reward maximisation by a linear probe on LM embeddings."""
