"""One runner interface for TF frozen graphs, SavedModels, TFLite and ONNX Runtime.

Every runner is fed the same preprocessed batch (``preprocess``), runs with the same intra-op
thread count (like the zoo's AIO_NUM_THREADS) and one inter-op thread, returns the raw outputs in
the contract order, and converts them to ``Detections`` once, here.

Owns: loading a model for inference, ``preprocess``, thread settings, per-call inference time and
the conversion to ``Detections``. Does not touch: files other than the model read, the safety
scans' rules (``detzoo.safety``), metrics.
"""

from __future__ import annotations

import abc
import time
from pathlib import Path

import numpy as np

from detzoo.detections import Detections
from detzoo.errors import DetzooError, first_line
from detzoo.source import ModelFormat, IOSpec


def resize_like_cv2(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR on RGB uint8, what the zoo's runner does before feeding a model."""
    import cv2

    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def preprocess(image: np.ndarray, io: IOSpec) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> the batch of one the model takes. Shared by calibration and evaluation.

    A TF-style resize stays in float for float models (as inside TF), and is rounded half to
    even back to uint8 for integer models: the contract wrapper computes the same in the graph.
    """
    x = image
    if io.resize and x.shape[:2] != tuple(io.resize):
        h, w = io.resize
        if io.resize_with == "cv2":
            x = resize_like_cv2(x, h, w)
        else:
            from detzoo.contract import resize_like_tf

            x = resize_like_tf(x, h, w, half_pixel=io.resize_with != "tf1")
    x = x[None]
    if io.input.dtype.startswith("float"):
        return (x.astype(np.float32) * np.float32(io.scale) + np.float32(io.offset)).astype(np.float32)
    if x.dtype != np.uint8:
        x = np.clip(np.rint(x), 0, 255)
    return np.ascontiguousarray(x, dtype=np.uint8)


class Runner(abc.ABC):
    """Load on ``activate`` (or ``with``), ``infer`` a batch, ``detect`` an image."""

    framework = ""

    def __init__(self, path: str | Path, io: IOSpec, threads: int = 1, label: str = "", allow_unsafe_ops: bool = False):
        if threads < 1:
            raise DetzooError(f"threads must be >= 1, got {threads}")
        self.path = Path(path)
        self.io = io
        self.threads = threads
        self.label = label or self.path.name
        self.last_inference_time = 0.0
        self.active = False
        self.allow_unsafe_ops = allow_unsafe_ops  # every runner scans what it loads unless this is set

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()

    def activate(self) -> None:
        if not self.active:
            self._activate()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    @abc.abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        pass

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw outputs in OUTPUT_ROLES order."""

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        self.activate()
        t0 = time.perf_counter()
        out = self._infer(batch)
        self.last_inference_time = time.perf_counter() - t0
        return out

    def detect(self, image: np.ndarray, batch: np.ndarray | None = None, image_hw=None) -> Detections:
        """``batch``: ``preprocess(image, self.io)`` when the caller already made it for another model.
        ``image_hw``: the original image's size when ``image`` was resized before the model (the
        zoo's feeding); boxes are normalized, so they map back by scaling alone."""
        raw = self.infer(preprocess(image, self.io) if batch is None else batch)
        return Detections.from_od_api(*raw, image_hw=image_hw or image.shape[:2], class_offset=self.io.class_offset)


def _tf_session_config(threads: int):
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the v1 loaders' deprecation notices are not the user's business

    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1,
                                    device_count={"GPU": 0})


class _TFSessionRunner(Runner):
    """A TF graph in a v1 Session of its own (threads are per session): ``_activate`` sets
    ``_sess``, ``_feed`` and ``_fetches``."""

    framework = "tensorflow"

    def _deactivate(self):
        self._sess.close()

    def _infer(self, batch):
        return self._sess.run(self._fetches, {self._feed: batch})


class TFGraphRunner(_TFSessionRunner):
    """A TF1 frozen graph in a v1 Session."""

    def _activate(self):
        import tensorflow as tf

        from detzoo.source import load_graph_def

        gd = load_graph_def(self.path)
        if not self.allow_unsafe_ops:
            from detzoo.safety import scan_graph_def

            scan_graph_def(gd, f"graph {self.path.name}")
        self._graph = tf.Graph()
        with self._graph.as_default():
            tf.compat.v1.import_graph_def(gd, name="")
        self._sess = tf.compat.v1.Session(graph=self._graph, config=_tf_session_config(self.threads))
        self._fetches = [self._graph.get_tensor_by_name(_tensor_name(n)) for n in self.io.output_names]
        self._feed = self._graph.get_tensor_by_name(_tensor_name(self.io.input.name))


class TFSavedModelRunner(_TFSessionRunner):
    """A SavedModel's ``serving_default`` signature, loaded in a v1 Session so threads are per-model."""

    def _activate(self):
        import tensorflow as tf

        from detzoo.source import load_saved_model_signature

        meta, sig = load_saved_model_signature(self.path)
        if not self.allow_unsafe_ops:
            from detzoo.safety import scan_saved_model

            scan_saved_model(meta, f"SavedModel {self.path}")
        self._graph = tf.Graph()
        self._sess = tf.compat.v1.Session(graph=self._graph, config=_tf_session_config(self.threads))
        with self._graph.as_default():
            tf.compat.v1.saved_model.loader.load(self._sess, ["serve"], str(self.path))
        in_name = self.io.input.name
        self._feed = self._graph.get_tensor_by_name(sig.inputs[in_name].name if in_name in sig.inputs
                                                    else _tensor_name(in_name))
        self._fetches = [self._graph.get_tensor_by_name(sig.outputs[n].name if n in sig.outputs
                                                        else _tensor_name(n)) for n in self.io.output_names]



class TFLiteRunner(Runner):
    framework = "tflite"

    def _activate(self):
        from detzoo.source import tflite_interpreter

        self._interp = tflite_interpreter(self.path, self.threads)
        if not self.allow_unsafe_ops:
            from detzoo.safety import scan_tflite

            scan_tflite(self.path, self._interp._get_ops_details())
        by_name = {d["name"]: d["index"] for d in self._interp.get_output_details()}
        self._outs = [by_name[n] for n in self.io.output_names]
        self._in = self._interp.get_input_details()[0]["index"]

    def _infer(self, batch):
        self._interp.set_tensor(self._in, batch)
        self._interp.invoke()
        return [self._interp.get_tensor(i) for i in self._outs]


class OrtRunner(Runner):
    """An ONNX artifact on onnxruntime's CPU provider; outputs are taken by position (contract order)."""

    framework = "onnxruntime"

    def __init__(self, path, io, threads=1, label="", optimization_level: str = "all", allow_unsafe_ops=False):
        super().__init__(path, io, threads, label, allow_unsafe_ops)
        self.optimization_level = optimization_level

    def _activate(self):
        import onnx
        import onnxruntime as ort
        from google.protobuf.message import DecodeError

        from detzoo.safety import scan_onnx

        data = self.path.read_bytes()
        try:
            model = onnx.load_from_string(data)
        except (DecodeError, ValueError):
            raise DetzooError(f"{self.path.name} is not a readable ONNX model") from None
        if not self.allow_unsafe_ops:
            scan_onnx(model, f"ONNX model {self.path.name}")
        del model

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization_level]
        so.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises several private exception types
            raise DetzooError(f"{self.path.name} is not a loadable ONNX model: {first_line(e)}") from None
        self._in = self._sess.get_inputs()[0].name
        self._outs = [o.name for o in self._sess.get_outputs()][:4]

    def _deactivate(self):
        del self._sess

    def _infer(self, batch):
        return self._sess.run(self._outs, {self._in: batch})


def _tensor_name(name: str) -> str:
    return name if ":" in name else name + ":0"


def source_runner(fmt: ModelFormat, path: Path, io: IOSpec, threads: int = 1, label: str = "source",
                  allow_unsafe_ops: bool = False) -> Runner:
    cls = {ModelFormat.FROZEN_GRAPH: TFGraphRunner, ModelFormat.SAVED_MODEL: TFSavedModelRunner,
           ModelFormat.TFLITE: TFLiteRunner}[ModelFormat(fmt)]
    return cls(path, io, threads, label, allow_unsafe_ops)
