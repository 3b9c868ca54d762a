"""fp16 and int8 variants of an fp32 artifact, as passes composed by core.py.

One file a pass, each with one public entry ``run`` (and a frozen config where it has options):
batch1.py (batch-1 specialization; its jobs in batch1_known.py, batch1_inline.py,
batch1_cleanup.py), plan.py (precision plan), fp16.py, calibration.py (``CalibrationConfig``),
cle.py (``CleConfig``), int8.py (``Int8Settings``) and search.py (accuracy search,
``SearchConfig``). prepare.py makes the model they start from, weights.py the int8 weights,
fidelity.py and checks.py measure, install.py writes the entry.

Owns nothing but these re-exports. Must not touch anything; code lives in the modules.
"""

from detzoo.quantize.calibration import CalibMethod
from detzoo.quantize.core import QuantizeConfig, QuantizeResult, quantize

__all__ = ["CalibMethod", "QuantizeConfig", "QuantizeResult", "quantize"]
