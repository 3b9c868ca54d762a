"""TF -> ONNX conversion, IO auto-detection and the parity check."""

from detzoo.convert.core import ConvertConfig, ConvertResult, convert
from detzoo.convert.parity import ParityTolerance

__all__ = ["ConvertConfig", "ConvertResult", "ParityTolerance", "convert"]
