"""Bad input to ``detzoo quantize``: one line, exit 2, the folder exactly as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from detzoo.manifest import Manifest
from tests.clihelp import assert_user_error, run_cli, snapshot


def _q(folder, *extra):
    return run_cli("quantize", folder, "--quiet", *extra)


def test_folder_without_manifest(tmp_path):
    (tmp_path / "entry").mkdir()
    assert_user_error(_q(tmp_path / "entry"), 2, "no manifest.json", "detzoo convert")
    assert_user_error(_q(tmp_path / "missing"), 2, "not found")


def test_manifest_without_its_fp32_artifact(sm_entry):
    m = Manifest.load(sm_entry)
    (sm_entry / m.variants["fp32"].file).unlink()
    before = snapshot(sm_entry)
    assert_user_error(_q(sm_entry), 2, "missing", m.variants["fp32"].file)
    assert snapshot(sm_entry) == before


def test_changed_fp32_artifact(sm_entry):
    m = Manifest.load(sm_entry)
    with open(sm_entry / m.variants["fp32"].file, "ab") as f:
        f.write(b"\0")
    assert_user_error(_q(sm_entry), 2, "changed")


def test_empty_calibration_folder(sm_entry, tmp_path):
    (tmp_path / "calib").mkdir()
    before = snapshot(sm_entry)
    assert_user_error(_q(sm_entry, "--calib-images", tmp_path / "calib"), 2, "holds no images")
    assert snapshot(sm_entry) == before


def test_fewer_usable_calibration_images_than_asked(sm_entry, shapes_split, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted(shapes_split[0].iterdir())[:3]:
        shutil.copy(p, calib / p.name)
    (calib / "zz_truncated.png").write_bytes((calib / sorted(os.listdir(calib))[0]).read_bytes()[:40])
    before = snapshot(sm_entry)
    assert_user_error(_q(sm_entry, "--calib-images", calib, "--calib-count", 4), 2,
                      "3 usable images, fewer than --calib-count 4", "1 undecodable")
    assert snapshot(sm_entry) == before


@pytest.mark.parametrize("args,needle", [
    (("--calib-count", "0"), "--calib-count must be >= 1, got 0"),
    (("--calib-method", "kl"), "--calib-method must be one of ['minmax', 'entropy', 'percentile'], got 'kl'"),
    (("--max-drop", "-1"), "--max-drop must be between 0 and 100"),
    (("--no-fp16", "--no-int8"), "nothing to do"),
    (("--no-int8", "--max-drop", "1"), "--max-drop applies to the int8 variant"),
    (("--threads", "0"), "--threads must be >= 1"),
])
def test_bad_options(sm_entry, args, needle):
    before = snapshot(sm_entry)
    assert_user_error(_q(sm_entry, *args), 2, needle)
    assert snapshot(sm_entry) == before


def test_input_the_calibration_images_cannot_feed(sm_entry, shapes_split):
    path = sm_entry / "manifest.json"
    d = json.loads(path.read_text())
    d["io"]["input"]["dtype"] = "float32"  # the images would arrive as float32; the model takes uint8
    d["io"]["scale"] = 1 / 255
    path.write_text(json.dumps(d))
    before = snapshot(sm_entry)
    assert_user_error(_q(sm_entry, "--calib-images", shapes_split[0]), 2, "cannot feed input", "takes uint8",
                      "gives float32")
    assert snapshot(sm_entry) == before


def test_quantizing_twice_needs_force(sm_entry, shapes_split):
    args = ("--calib-images", shapes_split[0], "--check-images", shapes_split[1], "--calib-count", "3")
    assert _q(sm_entry, *args).exit_code == 0
    before = snapshot(sm_entry)
    err = assert_user_error(_q(sm_entry, *args), 2, "already holds", ".fp16.onnx", ".int8.onnx", "--force")
    assert snapshot(sm_entry) == before, err
    r = run_cli("quantize", sm_entry, *args, "--force")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "fidelity AP" in r.stdout


def test_max_drop_without_detections_on_the_check_images(sm_entry, tmp_path, shapes_split):
    from PIL import Image

    blank = tmp_path / "blank"
    blank.mkdir()
    for k in range(3):
        Image.new("RGB", (128, 96), (20, 20, 20)).save(blank / f"b{k}.png")
    before = snapshot(sm_entry)
    assert_user_error(_q(sm_entry, "--calib-images", shapes_split[0], "--check-images", blank, "--max-drop", "1"),
                      2, "detects nothing", "--check-images")
    assert snapshot(sm_entry) == before


def test_interrupt_mid_way_leaves_folder_intact(sm_entry, shapes_split, monkeypatch):
    """An exception after the heavy work started (here: while writing the int8 model) changes nothing."""
    from detzoo.quantize import core

    args = ("--calib-images", shapes_split[0], "--check-images", shapes_split[1], "--calib-count", "3")
    assert _q(sm_entry, *args).exit_code == 0
    before = snapshot(sm_entry)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("detzoo.quantize.int8.run", boom)
    with pytest.raises(KeyboardInterrupt):
        core.quantize(core.QuantizeConfig(folder=sm_entry, calib_images=shapes_split[0], calib_count=3, force=True))
    assert snapshot(sm_entry) == before


def test_sigkill_mid_way_leaves_folder_intact(sm_entry, shapes_split):
    """A real process killed with SIGKILL while calibrating: previous artifacts and manifest survive."""
    args = ["--calib-images", str(shapes_split[0]), "--check-images", str(shapes_split[1]), "--calib-count", "3"]
    assert _q(sm_entry, *args).exit_code == 0
    before = snapshot(sm_entry)
    cmd = [sys.executable, "-c", "from detzoo.cli import main; main()", "quantize", str(sm_entry), "--force",
           "--calib-method", "percentile", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "calibrating" in line:
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    after = {k: v for k, v in snapshot(sm_entry).items() if not k.startswith(".detzoo-tmp-")}
    assert after == before


def test_a_cpu_class_that_does_not_exist(sm_entry):
    before = snapshot(sm_entry)
    r = run_cli("quantize", sm_entry, "--quiet", env={"DETZOO_CPU_CLASS": "avx3"})
    assert_user_error(r, 2, "DETZOO_CPU_CLASS='avx3'", "vnni, avx512, avx2, arm")
    assert snapshot(sm_entry) == before


@pytest.mark.parametrize("flags, words", [
    (("--reduce-range", "--int8-target", "vnni"), ("--reduce-range", "contradicts --int8-target vnni")),
    (("--no-reduce-range",), ("--no-reduce-range", "saturate", "--int8-target vnni")),
    (("--int8-target", "avx3"), ("target must be one of", "'avx3'")),
])
def test_reduce_range_against_the_int8_target(sm_entry, flags, words):
    before = snapshot(sm_entry)
    assert_user_error(_q(sm_entry, *flags), 2, *words)
    assert snapshot(sm_entry) == before


def test_calibration_images_of_one_other_size_work_and_say_so(sm_entry, shapes_split, tmp_path):
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted(shapes_split[0].iterdir())[:4]:
        Image.open(p).convert("RGB").resize((97, 61)).save(calib / (p.stem + ".png"))
    r = run_cli("quantize", sm_entry, "--no-fp16", "--calib-images", calib, "--check-images", shapes_split[1])
    assert r.exit_code == 0, r.output
    assert "all 4 calibration images are 97x61" in r.stderr
    assert Manifest.load(sm_entry).variants["int8"].settings["calibration"]["sizes"] == {"97x61": 4}
