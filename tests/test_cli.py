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
