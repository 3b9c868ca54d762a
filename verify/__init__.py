"""COCO accuracy, latency, reports and the accuracy gate."""

from detzoo.verify.core import VerifyConfig, VerifyResult, verify

__all__ = ["VerifyConfig", "VerifyResult", "verify"]
