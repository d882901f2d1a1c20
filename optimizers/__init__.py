"""Optimizers for optax: Shampoo, SOAP (Kronecker-factored) and normalised GD.

Imports only jax, optax and numpy, so any JAX project can use it:

  from optimizers import shampoo, soap, normalized_sgd
  tx = shampoo(1e-3, exponent="shampoo2", block_size=512, weight_decay=0.1)
"""
from optimizers import kronecker
from optimizers.normalized import normalized_sgd
from optimizers.normalized import scale_by_global_norm
from optimizers.shampoo import SHAMPOO_STATIC_ARGS
from optimizers.shampoo import ShampooLeafState
from optimizers.shampoo import ShampooState
from optimizers.shampoo import embedding_filter
from optimizers.shampoo import scale_by_shampoo
from optimizers.shampoo import shampoo
from optimizers.soap import SOAP_STATIC_ARGS
from optimizers.soap import SoapLeafState
from optimizers.soap import SoapState
from optimizers.soap import scale_by_soap
from optimizers.soap import soap
from optimizers.weight_decay import decoupled_weight_decay

__all__ = [
    "kronecker", "shampoo", "scale_by_shampoo", "ShampooState",
    "ShampooLeafState", "embedding_filter", "soap", "scale_by_soap",
    "SoapState", "SoapLeafState", "SHAMPOO_STATIC_ARGS", "SOAP_STATIC_ARGS",
    "normalized_sgd", "scale_by_global_norm", "decoupled_weight_decay",
]
