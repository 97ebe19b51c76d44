"""SAM3 image-model components and their efficient (distilled) variants.

Our own implementation with ``sam3.pt``-compatible parameter names; see
:mod:`sam3.model_builder` for the public builders.
"""

__version__ = "0.1.0"
