"""Sparse parity study (Edelman et al., NeurIPS 2023): frontier, lottery tickets, tabular."""
