"""The CLI starts instantly: no TensorFlow, onnxruntime or onnx import for --help."""

import os
import subprocess
import sys
from pathlib import Path

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


# A command whose library call writes what TensorFlow's and onnxruntime's C++ sides print at start-up
# (straight to file descriptor 2, as native code does), then fails as the test asks.
_NOISY = """
import os, sys
import detzoo.convert.inspect as ins
NOISE = [b"2026-12-02 00:00:00.000001: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda "
         b"drivers on your machine, GPU will not be used.\\n",
         b"I0000 00:00:1796174343.181485   10273 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\\n",
         b"2026-12-02 00:00:00.000 [W:onnxruntime:, graph.cc:4285 CleanUnusedInitializers] Removing initializer\\n"]
def noisy(path):
    for line in NOISE:
        os.write(2, line)
    raise {exc}
ins.inspect_onnx = noisy
from detzoo.cli import main
main()
"""


def _noisy(tmp_path, exc, *extra):
    env = dict(os.environ)
    env["DETZOO_LOG_DIR"] = str(tmp_path / "logs")
    return subprocess.run([sys.executable, "-c", _NOISY.format(exc=exc), "inspect", str(tmp_path / "m.onnx"), *extra],
                          capture_output=True, text=True, timeout=120, env=env)


def test_native_start_up_lines_never_reach_the_user_unless_verbose(tmp_path):
    r = _noisy(tmp_path, "__import__('detzoo.errors').errors.DetzooError('bad thing')")
    assert r.returncode == 2 and r.stderr.strip() == "detzoo: error: bad thing", r.stderr
    v = _noisy(tmp_path, "__import__('detzoo.errors').errors.DetzooError('bad thing')", "--verbose")
    assert v.returncode == 2
    assert "Could not find cuda drivers" in v.stderr and "[W:onnxruntime:" in v.stderr and "bad thing" in v.stderr


def test_detzoos_own_failure_is_exit_3_with_a_logged_traceback(tmp_path):
    r = _noisy(tmp_path, "ZeroDivisionError('division by zero in a kernel we call')")
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "detzoo: internal error (please report): ZeroDivisionError: division by zero in a kernel we call; "
        "traceback in "), r.stderr
    log = Path(lines[0].rsplit("traceback in ", 1)[1])
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text() and "def noisy" not in r.stderr
    assert "in noisy" in log.read_text() and "detzoo inspect" in log.read_text()


def test_an_internal_error_with_an_empty_message_still_gives_one_line(tmp_path):
    r = _noisy(tmp_path, "RuntimeError()")
    assert r.returncode == 3 and "internal error (please report): RuntimeError: RuntimeError;" in r.stderr
