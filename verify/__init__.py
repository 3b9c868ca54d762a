"""COCO accuracy, latency, reports and the accuracy gate."""
