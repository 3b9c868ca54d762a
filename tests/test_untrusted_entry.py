"""An entry handed out by someone else: every command that loads its models scans them first.

The attack of the issue: the source frozen graph swapped for the same graph plus a ``WriteFile``
wired as a control input of ``num_detections``, and the fp32 artifact swapped for one with a
custom-domain op inside an ``If`` branch, each with the manifest's sha256 and size updated to
match. Every command refuses (exit 2, the op named), writes nothing and runs nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest

from detzoo.fsutil import sha256_file
from detzoo.manifest import Manifest
from tests.clihelp import assert_user_error, run_cli, snapshot


@pytest.fixture(scope="module")
def frozen_entry(tmp_path_factory, two_stage_graph, shapes):
    """The tiny two-stage frozen graph, converted and verified once (the honest entry)."""
    from detzoo.convert import ConvertConfig, convert

    out = tmp_path_factory.mktemp("frozen_entry") / "entry"
    src = out.parent / "model.pb"
    shutil.copy(two_stage_graph, src)
    convert(ConvertConfig(source=src, out=out, check=False))
    r = run_cli("verify", out, "--images", shapes[0], "--annotations", shapes[1], "--latency-runs", "0",
                "--max-drop", "100", "--quiet")
    assert r.exit_code == 0, r.output
    return out


def _copy(frozen_entry, tmp_path):
    entry = tmp_path / "entry"
    shutil.copytree(frozen_entry, entry)
    shutil.copy(frozen_entry.parent / "model.pb", tmp_path / "model.pb")
    m = Manifest.load(entry)
    m.source["path"] = str(tmp_path / "model.pb")
    m.save(entry)
    return entry


def _swap_source(entry, tmp_path):
    """The source graph plus WriteFile -> num_detections (control input); the manifest follows."""
    import tensorflow as tf

    m = Manifest.load(entry)
    path = tmp_path / "model.pb"
    gd = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    target = tmp_path / "pwned.sh"
    with tf.Graph().as_default() as g:
        tf.io.write_file(tf.constant(str(target)), tf.constant("#!/bin/sh\nid\n"), name="evil/WriteFile")
    gd.node.extend(g.as_graph_def().node)
    num = next(n for n in gd.node if n.name == m.io.output_names[0].split(":")[0])
    num.input.append("^evil/WriteFile")
    path.write_bytes(gd.SerializeToString())
    m.source.update(sha256=sha256_file(path), size=path.stat().st_size)
    m.save(entry)
    return target


def _swap_artifact(entry, tmp_path):
    """The fp32 artifact replaced by an ONNX model with com.evil::RunShell inside an If branch."""
    from tests.fixtures.unsafe import make_custom_domain_onnx

    m = Manifest.load(entry)
    evil = make_custom_domain_onnx(tmp_path / "evil", nested=True)
    art = entry / m.variants["fp32"].file
    shutil.copy(evil, art)
    m.variants["fp32"].sha256, m.variants["fp32"].size = sha256_file(art), art.stat().st_size
    m.save(entry)


def _unchanged(entry, before):
    after = snapshot(entry)
    assert after == before


@pytest.mark.parametrize("command", ["verify", "shard", "reverify", "build-from-entry-source"])
def test_swapped_source_is_refused_before_it_runs(frozen_entry, tmp_path, shapes, command):
    entry = _copy(frozen_entry, tmp_path)
    target = _swap_source(entry, tmp_path)
    before = snapshot(entry)
    args = {"verify": ["verify", entry, "--images", shapes[0], "--annotations", shapes[1]],
            "shard": ["verify", entry, "--images", shapes[0], "--annotations", shapes[1], "--shard", "1/2"],
            "reverify": ["reverify", entry],
            "build-from-entry-source": ["build", tmp_path / "model.pb", "--out", tmp_path / "new",
                                        "--images", shapes[0], "--annotations", shapes[1]]}[command]
    assert_user_error(run_cli(*args, "--quiet"), 2, "WriteFile", "--allow-unsafe-ops")
    assert not target.exists()
    _unchanged(entry, before)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["verify", "shard", "quantize", "reverify", "merge"])
def test_swapped_artifact_is_refused_before_it_runs(frozen_entry, tmp_path, shapes, command):
    entry = _copy(frozen_entry, tmp_path)
    data = ["--images", shapes[0], "--annotations", shapes[1]]
    if command == "merge":   # honest shards first, then the swap, then the merge
        for k in (1, 2):
            r = run_cli("verify", entry, *data, "--shard", f"{k}/2", "--quiet")
            assert r.exit_code == 0, r.output
    _swap_artifact(entry, tmp_path)
    before = snapshot(entry)
    args = {"verify": ["verify", entry, *data], "shard": ["verify", entry, *data, "--shard", "2/2"],
            "quantize": ["quantize", entry, "--calib-images", shapes[0]], "reverify": ["reverify", entry],
            "merge": ["merge", entry]}[command]
    # merge refuses even earlier: the shards no longer match the manifest's models
    why = ("models changed", "re-run the shards") if command == "merge" else ("com.evil::RunShell",
                                                                               "--allow-unsafe-ops")
    assert_user_error(run_cli(*args, "--quiet"), 2, *why)
    _unchanged(entry, before)


def test_allow_unsafe_ops_is_honoured_and_recorded(frozen_entry, tmp_path, shapes):
    """The escape hatch works where the user trusts the model, and the report says it was used."""
    entry = _copy(frozen_entry, tmp_path)
    target = _swap_source(entry, tmp_path)
    r = run_cli("verify", entry, "--images", shapes[0], "--annotations", shapes[1], "--latency-runs", "0",
                "--max-drop", "100", "--allow-unsafe-ops", "--quiet")
    assert r.exit_code == 0, r.output
    assert target.exists()          # it really ran the trusted model's WriteFile
    report = json.loads((entry / "report.json").read_text())
    assert report["allow_unsafe_ops"] is True
    assert Manifest.load(entry).results["verify"]["allow_unsafe_ops"] is True


def test_a_source_outside_the_entry_is_reported_not_fatal(frozen_entry):
    report = json.loads((frozen_entry / "report.json").read_text())
    assert any("lies outside" in n and "model.pb" in n for n in report["notes"])
    assert "lies outside" in (frozen_entry / "REPORT.md").read_text()


def test_custom_domain_op_inside_a_loop_body_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from detzoo.safety import UnsafeModelError, scan_onnx

    body = helper.make_graph(
        [helper.make_node("RunShell", ["x_in"], ["x_out"], domain="com.evil", name="shell_in_loop"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [1])])
    g = helper.make_graph([helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)], "g",
                          [helper.make_tensor_value_info("n", TensorProto.INT64, []),
                           helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    with pytest.raises(UnsafeModelError, match="com.evil::RunShell .*shell_in_loop"):
        scan_onnx(model, "ONNX model m.onnx")
    onnx.save(model, tmp_path / "m.onnx")
    r = run_cli("inspect", tmp_path / "m.onnx")
    assert r.exit_code == 0 and "refuses:" in r.output and "com.evil::RunShell" in r.output
