"""Kronecker-approximation study (Morwani et al. 2024): runner, analysis, configs."""
