"""Untrusted models: unsafe ops are refused before anything runs; archives extract safely."""

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

from detzoo.errors import DetzooError
from detzoo.source import open_source
from tests.clihelp import assert_user_error, run_cli
from tests.fixtures import unsafe


@pytest.mark.parametrize("make,op", [
    (unsafe.make_readfile_graph, "ReadFile"),
    (unsafe.make_writefile_graph, "WriteFile"),
    (unsafe.make_pyfunc_graph, "PyFunc"),
    (unsafe.make_readfile_in_library_graph, "ReadFile"),
    (unsafe.make_readfile_saved_model, "ReadFile"),
])
@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_unsafe_tf_models_refused(tmp_path, make, op, command):
    model = make(tmp_path / "m")
    out = tmp_path / "out"
    if command == "convert":
        assert_user_error(run_cli("convert", model, "--out", out, "--no-check"), 2, op, "--allow-unsafe-ops")
        assert not out.exists()
    else:
        r = run_cli("inspect", model)
        assert r.exit_code == 0 and "refuses:" in r.output and op in r.output


def test_saved_model_lists_both_file_ops(tmp_path):
    model = unsafe.make_readfile_saved_model(tmp_path / "m")
    err = assert_user_error(run_cli("convert", model, "--out", tmp_path / "o", "--no-check"), 2)
    assert "MatchingFiles" in err and "ReadFile" in err


def test_allow_unsafe_ops_lets_a_trusted_model_through_the_scan(tmp_path):
    from detzoo.convert.loading import load_model_graph

    model = unsafe.make_readfile_graph(tmp_path / "m")
    with open_source(model) as src:
        assert load_model_graph(src, allow_unsafe_ops=True).node  # no refusal


@pytest.mark.parametrize("nested", [False, True])
def test_custom_domain_onnx_refused_by_the_runner(tmp_path, nested):
    from detzoo.runners import OrtRunner
    from detzoo.safety import UnsafeModelError
    from detzoo.source import IOSpec, TensorSpec

    path = unsafe.make_custom_domain_onnx(tmp_path, nested=nested)
    io_spec = IOSpec(input=TensorSpec("image_tensor:0", "uint8", [1, None, None, 3]),
                     outputs={r: r for r in ("num_detections", "detection_boxes", "detection_scores",
                                             "detection_classes")})
    with pytest.raises(UnsafeModelError, match="com.evil::RunShell"):
        OrtRunner(path, io_spec).activate()


def _tar(tmp_path, build):
    p = tmp_path / "model.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        build(tf)
    return p


def _add(tf, name, data=b"x", **kw):
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = len(data) if info.type == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


def _tree(root):
    """Path -> what is there (file bytes, link target or folder), links not followed."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (("link", os.readlink(p)) if p.is_symlink() else ("file", p.read_bytes()) if p.is_file()
                    else ("dir",))
    return out


@pytest.fixture
def extraction(tmp_path, monkeypatch):
    """open_source extracts into a temporary folder; here under tmp_path/tmp, so every place an
    escaping member could land is inside tmp_path. Returns the folders it extracted into."""
    from detzoo import source

    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    dests, real = [], source.safe_extract

    def recording(archive, dest):
        dests.append(Path(dest))
        return real(archive, dest)

    monkeypatch.setattr(source, "safe_extract", recording)
    return dests


# (archive members given the folder outside the extraction, refusal words, where the member would
# land given the extraction folder and that outside folder)
ESCAPES = {
    "dotdot": (lambda tf, out: _add(tf, "../evil/frozen_inference_graph.pb"), "unsafe member path",
               lambda dest, out: dest.parent / "evil" / "frozen_inference_graph.pb"),
    "dotdot-deep": (lambda tf, out: _add(tf, "../../outside/frozen_inference_graph.pb"), "unsafe member path",
                    lambda dest, out: out / "frozen_inference_graph.pb"),
    "absolute": (lambda tf, out: _add(tf, str(out / "abs.pb")), "unsafe member path",
                 lambda dest, out: out / "abs.pb"),
    "symlink-dir-then-write-through": (
        lambda tf, out: (_add(tf, "m", type=tarfile.SYMTYPE, linkname=str(out)),
                         _add(tf, "m/frozen_inference_graph.pb", b"owned")), "link",
        lambda dest, out: out / "frozen_inference_graph.pb"),
    "symlink-to-file-outside": (
        lambda tf, out: _add(tf, "m/frozen_inference_graph.pb", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "link", lambda dest, out: dest / "m" / "frozen_inference_graph.pb"),
    "hardlink-then-write-through": (
        lambda tf, out: (_add(tf, "m/x", type=tarfile.LNKTYPE, linkname="../../outside/victim"),
                         _add(tf, "m/x", b"owned")), "link",
        lambda dest, out: out / "victim"),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_unsafe_archives_refused(tmp_path, extraction, case):
    build, needle, landing = ESCAPES[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"victim")
    archive = _tar(tmp_path, lambda tf: build(tf, outside))
    before = _tree(tmp_path)
    try:
        with open_source(archive):
            pass
        err = None
    except DetzooError as e:
        err = str(e)
    [dest] = extraction
    assert dest.parent == tmp_path / "tmp" and not dest.exists()  # the real extraction folder, cleaned up
    spot = landing(dest, outside)
    assert (spot.read_bytes() == b"victim") if spot.name == "victim" else not os.path.lexists(spot), spot
    assert _tree(tmp_path) == before, "extraction wrote outside its folder"
    assert err is not None and needle in err, err


def test_corrupt_archive(tmp_path):
    p = tmp_path / "model.tar.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert_user_error(run_cli("convert", p, "--out", tmp_path / "o", "--no-check"), 2, "model.tar.gz")
