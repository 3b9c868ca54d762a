"""detzoo: TensorFlow object-detection models to verified ONNX model-zoo artifacts.

Owns: the package version. Does not touch: anything else; it imports nothing, so ``import detzoo``
stays instant (stages: detzoo.convert, detzoo.quantize, detzoo.verify; CLI: detzoo.cli).
"""

__version__ = "0.1.0"
