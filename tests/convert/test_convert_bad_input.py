"""Bad input to convert: one line, exit 2, nothing left in the output folder."""

import os

import pytest

from tests.clihelp import assert_user_error, run_cli, snapshot


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def _convert(src, out, *extra):
    return run_cli("convert", src, "--out", out, "--no-check", *extra)


def test_missing_path(tmp_path, out):
    assert_user_error(_convert(tmp_path / "missing.pb", out), 2, "not found", "missing.pb")
    assert not out.exists()


def test_folder_without_model(tmp_path, out):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    assert_user_error(_convert(tmp_path / "empty", out), 2, "no model in")
    assert not out.exists()


@pytest.mark.parametrize("content", [os.urandom(4096), b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * 10])
def test_random_or_truncated_pb(tmp_path, out, content, real_model_path):
    p = tmp_path / "frozen_inference_graph.pb"
    p.write_bytes(content)
    assert_user_error(_convert(p, out), 2, "frozen_inference_graph.pb")
    assert not out.exists()


def test_truncated_real_pb(tmp_path, out, real_model_path):
    p = tmp_path / "frozen_inference_graph.pb"
    p.write_bytes(real_model_path.read_bytes()[:100_000])
    assert_user_error(_convert(p, out), 2, "frozen_inference_graph.pb")
    assert not out.exists()


def test_corrupt_tflite(tmp_path, out):
    p = tmp_path / "m.tflite"
    p.write_bytes(b"\x1c\x00\x00\x00TFL3" + os.urandom(200))
    assert_user_error(_convert(p, out), 2, "m.tflite")
    assert not out.exists()


def _tiny_graph_without_detection_outputs(path):
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name="image_tensor")
        tf.identity(tf.reduce_mean(tf.cast(x, tf.float32)), name="logits")
    path.write_bytes(g.as_graph_def().SerializeToString())


def test_graph_without_detection_outputs(tmp_path, out):
    p = tmp_path / "frozen_inference_graph.pb"
    _tiny_graph_without_detection_outputs(p)
    assert_user_error(_convert(p, out), 2, "no detection outputs", "--output")
    assert_user_error(_convert(p, out, "--output", "logits"), 2, "4 names")
    assert_user_error(_convert(p, out, "--output", "a,b,c,d"), 2, "not in")
    assert not out.exists()


def test_wrong_input_name(tmp_path, out):
    p = tmp_path / "frozen_inference_graph.pb"
    _tiny_graph_without_detection_outputs(p)
    assert_user_error(_convert(p, out, "--input", "nope"), 2, "--input", "nope")


def test_saved_model_without_serving_default(tmp_path, out):
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def detect(self, x):
            return {"y": tf.reduce_sum(tf.cast(x, tf.float32))}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"other": m.detect})
    assert_user_error(_convert(tmp_path / "sm", out), 2, "serving_default", "other")
    assert not out.exists()


def test_saved_model_proto_given_as_pb(tmp_path, out):
    (tmp_path / "sm").mkdir()
    p = tmp_path / "sm" / "saved_model.pb"
    p.write_bytes(b"")
    assert_user_error(_convert(p, out), 2, "SavedModel", "folder")


def test_existing_artifacts_refused_without_force(real_fp32_copy, real_model_path):
    before = snapshot(real_fp32_copy)
    assert_user_error(_convert(real_model_path, real_fp32_copy), 2, "already holds", "--force")
    assert snapshot(real_fp32_copy) == before


@pytest.mark.parametrize("args,needle", [(["--opset", "7"], "--opset"), (["--threads", "0"], "--threads"),
                                         (["--name", "../x"], "--name"), (["--score-atol", "0"], "score-atol")])
def test_options_out_of_range(tmp_path, out, real_model_path, args, needle):
    r = run_cli("convert", real_model_path, "--out", out, *args)
    assert_user_error(r, 2, needle)
    assert not out.exists()


# --- TF2 Object Detection API export folders (issue 15) --------------------------------------

def test_saved_model_without_detection_outputs_names_its_input(tmp_path, out):
    """A float-input classifier-shaped signature: the one line names the input found."""
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="input_tensor")])
        def detect(self, x):
            return {"logits": tf.reduce_mean(x, axis=[1, 2])}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "export" / "saved_model"), signatures={"serving_default": m.detect})
    (tmp_path / "export" / "pipeline.config").write_text("model { ssd { num_classes: 4 } }\n")
    assert_user_error(_convert(tmp_path / "export", out), 2, "lacks outputs", "'input_tensor' float32 [1, ?, ?, 3]",
                      "logits", "--output")
    assert not out.exists()


def test_export_folder_with_checkpoint_but_no_saved_model(tmp_path, out):
    """pipeline.config and checkpoint/ without saved_model/: a training folder, not an export."""
    folder = tmp_path / "ssd_mobilenet_v2"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "pipeline.config").write_text("model { ssd { num_classes: 4 } }\n")
    (folder / "checkpoint" / "checkpoint").write_text('model_checkpoint_path: "ckpt-0"\n')
    (folder / "checkpoint" / "ckpt-0.index").write_bytes(b"\0" * 16)
    (folder / "checkpoint" / "ckpt-0.data-00000-of-00001").write_bytes(b"\0" * 16)
    assert_user_error(_convert(folder, out), 2, "no model in", "saved_model/", "checkpoint/", "exporter_main_v2")
    assert not out.exists()


def test_pipeline_config_beside_frozen_graph_is_not_read(tmp_path, out, two_stage_graph):
    """The graph is the model: a pipeline.config beside it (here one that would not even parse, and
    names another input size and class count) changes nothing."""
    import shutil

    from detzoo.manifest import Manifest

    folder = tmp_path / "faster_rcnn"
    folder.mkdir()
    shutil.copy(two_stage_graph, folder / "frozen_inference_graph.pb")
    (folder / "pipeline.config").write_text(
        "model { faster_rcnn { num_classes: 90 image_resizer { fixed_shape_resizer { height: 300 width: 300 } } }\n"
        "this is { not a pipeline config\n")
    r = _convert(folder, out)
    assert r.exit_code == 0, r.output
    m = Manifest.load(out)
    assert m.source["format"] == "frozen_graph" and m.source["model"].endswith("frozen_inference_graph.pb")
    assert m.io.resize is None and m.source_spec().resize is None and m.source_spec().num_classes != 90
