"""Scan untrusted models for ops that reach outside the tensor world, before running anything.

Models from the internet are code: a TF graph can read or write files, list folders, call back
into Python or load custom kernels from shared libraries. convert, inspect and verify scan first
and refuse such models unless the user passes ``--allow-unsafe-ops``.

Owns: the lists of unsafe ops and trusted domains, and the scans. Does not touch: loading a model
(callers hand over what they loaded), running one.
"""

from __future__ import annotations

from pathlib import Path

from detzoo.errors import DetzooError

# TF ops that touch the file system, the network or the Python runtime.
UNSAFE_TF_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2",
    "RestoreSlice", "MergeV2Checkpoints", "PyFunc", "PyFuncStateless", "EagerPyFunc", "ImmutableConst",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader",
    "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader",
    "IdentityReader", "IdentityReaderV2", "ReaderReadV2", "TFRecordDataset", "TFRecordDatasetV2",
    "TextLineDataset", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2", "DatasetToTFRecord",
    "ExperimentalDatasetToTFRecord", "SnapshotDataset", "SnapshotDatasetV2", "SaveDataset", "SaveDatasetV2",
    "LoadDataset", "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteImageSummary", "WriteAudioSummary", "WriteHistogramSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "FlushSummaryWriter", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3",
    "DebugNanCount", "DebugNumericSummary", "DebugNumericSummaryV2", "FileSystemSetConfiguration",
    "LoadAndRemapMatrix", "GenerateVocabRemapping", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "DecodeProtoV2", "EncodeProto", "RpcOp", "Rpc", "TryRpc",
    "CollectiveGather", "CollectiveReduce", "CollectiveBcastSend", "CollectiveBcastRecv", "_Send", "_Recv",
    "_HostSend", "_HostRecv", "Recv", "Send",
})
# SavedModels restore their variables with these; allowed only in the saver's own functions.
SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin", "Save",
                       "Restore", "RestoreSlice", "SaveSlices"})
TRUSTED_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Custom TFLite ops we know to be pure tensor code.
TRUSTED_TFLITE_CUSTOM = frozenset({"TFLite_Detection_PostProcess"})


class UnsafeModelError(DetzooError):
    pass


def _refuse(what: str, found: dict[str, set[str]]) -> None:
    if found:
        ops = ", ".join(f"{op} ({', '.join(sorted(where)[:3])})" for op, where in sorted(found.items()))
        raise UnsafeModelError(f"{what} contains ops that reach outside the model: {ops}; "
                               "refusing to run it (pass --allow-unsafe-ops if you trust this model)")


def _registered(op: str) -> bool:
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op) is not None


def scan_graph_def(graph_def, what: str = "graph", saver_scopes: tuple = ()) -> None:
    """Refuse unsafe or unregistered (custom shared-library) ops, in nodes and the function library."""
    found: dict[str, set[str]] = {}

    def check(op: str, where: str, saver_ok: bool):
        if op in UNSAFE_TF_OPS and not (saver_ok and op in SAVER_OPS):
            found.setdefault(op, set()).add(where)
        elif not _registered(op) and not any(op == f.signature.name for f in graph_def.library.function):
            found.setdefault(op + " [custom op, not a TensorFlow op]", set()).add(where)

    for n in graph_def.node:
        check(n.op, n.name, any(n.name.startswith(s) for s in saver_scopes))
    for f in graph_def.library.function:
        saver_fn = "_traced_save" in f.signature.name or "_traced_restore" in f.signature.name
        for n in f.node_def:
            check(n.op, f"{f.signature.name}/{n.name}", saver_fn)
    _refuse(what, found)


def scan_saved_model(meta, what: str) -> None:
    """A SavedModel's graph and function library; its own saver (the variables' save/restore) is allowed."""
    scope = meta.saver_def.filename_tensor_name.split("/")[0] if meta.saver_def.filename_tensor_name else ""
    scan_graph_def(meta.graph_def, what,
                   saver_scopes=tuple(s for s in (scope + "/", "saver_filename", "save/") if s != "/"))


def scan_tflite(path: Path, ops_details: list[dict]) -> None:
    found: dict[str, set[str]] = {}
    for op in ops_details:
        name = op.get("op_name", "")
        if name in UNSAFE_TF_OPS or name == "FlexReadFile" or (
                name.startswith("Flex") and name[4:] in UNSAFE_TF_OPS):
            found.setdefault(name, set()).add(str(op.get("index")))
    _refuse(f"TFLite model {path.name}", found)


def scan_onnx(model, what: str = "ONNX model") -> None:
    found: dict[str, set[str]] = {}

    from detzoo.onnxgraph import walk_nodes

    for n in walk_nodes(model.graph):
        if n.domain not in TRUSTED_ONNX_DOMAINS:
            found.setdefault(f"{n.domain}::{n.op_type}", set()).add(n.name or n.op_type)
    _refuse(what, found)
