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
