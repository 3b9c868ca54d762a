"""The CLI starts instantly: no TensorFlow, onnxruntime or onnx import for --help."""

import subprocess
import sys

import pytest

HEAVY = ("tensorflow", "onnxruntime", "onnx", "tf2onnx", "pycocotools", "matplotlib", "ray")


@pytest.mark.parametrize("args", [["--help"], ["convert", "--help"], ["quantize", "--help"], ["verify", "--help"],
                                  ["build", "--help"], ["reverify", "--help"], ["inspect", "--help"],
                                  ["merge", "--help"]])
def test_help_imports_nothing_heavy(args):
    code = ("import sys\nfrom detzoo.cli import app\n"
            "try:\n    app(" + repr(args) + ")\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in " + repr(HEAVY) + " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert "Usage" in r.stdout


def test_quiet_run_prints_nothing_on_stderr(shapes_entry, shapes):
    """TensorFlow's C++ start-up lines (which ignore TF_CPP_MIN_LOG_LEVEL) are filtered out."""
    r = subprocess.run([sys.executable, "-c", "from detzoo.cli import main; main()", "verify", str(shapes_entry),
                        "--images", str(shapes[0]), "--annotations", str(shapes[1]), "--latency-runs", "0",
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_errors_still_reach_stderr_through_the_filter(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from detzoo.cli import main; main()", "convert",
                        str(tmp_path / "nope.pb"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"detzoo: error: model not found: {tmp_path / 'nope.pb'}"
