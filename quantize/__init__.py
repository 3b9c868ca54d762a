"""fp16 and int8 variants of an fp32 artifact: batch-1 specialization, a detection-aware precision
plan, plan-driven fp16, calibrated static QDQ int8 and an accuracy-aware search."""

from detzoo.quantize.calibration import CalibMethod
from detzoo.quantize.core import QuantizeConfig, QuantizeResult, quantize

__all__ = ["CalibMethod", "QuantizeConfig", "QuantizeResult", "quantize"]
