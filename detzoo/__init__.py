"""detzoo: TensorFlow object-detection models to verified ONNX model-zoo artifacts."""

__version__ = "0.1.0"
