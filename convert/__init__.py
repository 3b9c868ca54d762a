"""TF -> ONNX conversion, IO auto-detection and the parity check.

Owns: re-exporting the stage's public API. Does not touch: anything; code lives in the modules.
"""

from detzoo.convert.core import ConvertConfig, ConvertResult, convert
from detzoo.convert.parity import ParityTolerance

__all__ = ["ConvertConfig", "ConvertResult", "ParityTolerance", "convert"]
