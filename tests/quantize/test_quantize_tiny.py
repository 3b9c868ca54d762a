"""fp16 and int8 on the tiny TF detectors (SavedModel, TFLite twin, two-stage frozen graph)."""

from __future__ import annotations

import shutil

import onnx

from detzoo.fsutil import sha256_file
from detzoo.images import decode_image, list_images
from detzoo.manifest import Manifest
from detzoo.onnxgraph import walk_nodes
from detzoo.quantize import QuantizeConfig, quantize
from detzoo.runners import OrtRunner


def _cfg(folder, split, **kw):
    calib, check = split
    return QuantizeConfig(folder=folder, calib_images=calib, check_images=check, **kw)


def _copy(src, tmp_path, name="entry"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_fp16_and_int8_recorded_and_runnable(sm_entry, shapes_split):
    res = quantize(_cfg(sm_entry, shapes_split, calib_count=6))
    m = Manifest.load(sm_entry)
    assert set(m.variants) == {"fp32", "fp16", "int8"}
    for name in ("fp16", "int8"):
        v = m.variants[name]
        path = sm_entry / v.file
        assert v.file == f"{m.name}.{name}.onnx" and v.parent == "fp32" and v.precision == name
        assert v.sha256 == sha256_file(path) and v.size == path.stat().st_size
        assert v.settings["parent_sha256"] == m.variants["fp32"].sha256
        assert v.settings["plan"]["regions"]["network"]["nodes"] > 0
        assert v.checks["fidelity"]["fidelity_ap"] >= 0.9, v.checks
        model = onnx.load(path)
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT] * 4
        img = decode_image(list_images(shapes_split[1])[0])
        with OrtRunner(path, m.io) as run:
            assert len(run.detect(img)) > 0
    s = m.variants["int8"].settings
    assert s["calibration"]["count"] == 6 and s["calibration"]["ids"] == [p.name for p in
                                                                           list_images(shapes_split[0])[:6]]
    assert s["int8"]["activations"] == "uint8 asymmetric" and s["int8"]["per_channel"] is True
    assert s["excluded_nodes"] and all("image-facing convolution" in w for w in s["excluded_nodes"].values())
    assert "int8_dot_product" in s["machine"] and s["machine"]["cpu_class"] in ("vnni", "avx512", "avx2", "arm", "other")
    assert s["portability"]["saturation_safe"] and s["portability"]["largest_pair_sum"] <= 128
    assert s["int8"]["target"] == "portable" and s["int8"]["weight_passes"]["bias_correction"] is True
    assert s["speed_probe"]["cpu_class"] == s["machine"]["cpu_class"] and s["speed_probe"]["int8_ms"] > 0
    assert s["check_images"]["count"] == len(list_images(shapes_split[1]))
    types = {n.op_type for n in walk_nodes(onnx.load(sm_entry / m.variants["int8"].file).graph)}
    assert {"QuantizeLinear", "DequantizeLinear"} <= types
    # inspect proves the installed file (its network inside the batch Loop) as quantize did
    from detzoo.convert.inspect import inspect_onnx

    proof = inspect_onnx(sm_entry / m.variants["int8"].file)["int8"]
    assert proof["gemm_weights_checked"] == s["portability"]["gemm_weights_checked"] > 0
    assert proof["saturation_safe"] and proof["largest_pair_sum"] == s["portability"]["largest_pair_sum"]
    for name in ("fp16", "int8"):  # the batch-1 build takes any batch again, checked row by row
        v = m.variants[name]
        assert v.settings["batch"] == "any" and v.checks["batch"]["checked"] and v.checks["batch"]["batch"] == 2
        assert v.checks["batch"]["max_score_diff"] <= 1e-4 and v.checks["batch"]["matched"] > 0
    assert res.fidelity["int8"] == m.variants["int8"].checks["fidelity"]
    assert not res.warnings


def test_tflite_twin_quantizes(tflite_fp32_dir, shapes_split, tmp_path):
    entry = _copy(tflite_fp32_dir, tmp_path)
    res = quantize(_cfg(entry, shapes_split, calib_count=4))
    assert res.fidelity["fp16"]["fidelity_ap"] >= 0.95 and res.fidelity["int8"]["fidelity_ap"] >= 0.9


def test_two_stage_keeps_unprovable_loops_float(two_stage_fp32_dir, shapes_split, tmp_path):
    entry = _copy(two_stage_fp32_dir, tmp_path)
    res = quantize(_cfg(entry, shapes_split, calib_count=4))
    loops = {r.node: r for r in res.batch1.loops}
    assert any(r.inlined for r in loops.values()) and any(not r.inlined for r in loops.values())
    kept = [r for r in loops.values() if not r.inlined]
    assert all(r.reason for r in kept)
    m = Manifest.load(entry)
    regions = m.variants["fp16"].settings["plan"]["regions"]
    assert regions["control_flow"]["precision"] == "float32" and "selection" in regions
    fp16 = onnx.load(entry / m.variants["fp16"].file)
    top = fp16.graph  # the network sits in the contract's batch Loop; its own Loops are inside
    top = next(a.g for n in top.node if n.op_type == "Loop" for a in n.attribute if a.g.name == "detzoo_contract_body")
    loop_bodies = [a.g for n in top.node if n.op_type == "Loop" for a in n.attribute if a.name == "body"]
    assert loop_bodies and all(i.data_type != onnx.TensorProto.FLOAT16 for b in loop_bodies for i in b.initializer)
    assert res.fidelity["fp16"]["fidelity_ap"] >= 0.95 and res.fidelity["int8"]["fidelity_ap"] >= 0.9


def test_overlapping_calibration_and_check_images_warn(sm_entry, shapes):
    res = quantize(QuantizeConfig(folder=sm_entry, fp16=False, calib_images=shapes[0], check_images=shapes[0],
                                  calib_count=4))
    assert len(res.warnings) == 1 and "4 calibration image(s) also among the check images" in res.warnings[0]
    assert Manifest.load(sm_entry).variants["int8"].settings["calibration"]["overlap_with_check_images"]


def test_max_drop_zero_returns_nodes_and_records_each_step(two_stage_fp32_dir, shapes_split, tmp_path):
    # Calibrated on two or more shapes images the first int8 try is exact (nothing to search), on
    # shapes_000 alone no return fits; on shapes_008 alone the activation ranges miss the check images'
    # (first drop 9.4 points) and returning 1, then 2 nodes to float brings the drop to 0.
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(shapes_split[0] / "shapes_008.png", calib)
    entry = _copy(two_stage_fp32_dir, tmp_path)
    res = quantize(_cfg(entry, (calib, shapes_split[1]), fp16=False, max_drop=0.0))
    log = res.search
    assert log["met"] and log["steps"][-1]["drop_points"] == 0.0
    assert log["steps"][0]["step"] == 0 and log["steps"][0]["returned_to_float"] == []
    assert log["steps"][0]["drop_points"] > 0.0 and len(log["steps"]) > 1  # the search ran
    s = Manifest.load(entry).variants["int8"].settings
    assert s["accuracy_search"] == log
    returned = [n for st in log["steps"] for n in st["returned_to_float"]]
    assert returned and all(st["returned_to_float"] for st in log["steps"][1:])
    assert set(returned) <= set(s["excluded_nodes"])
    assert all("accuracy search step" in s["excluded_nodes"][n] for n in returned)
    assert log["most_sensitive"] and log["most_sensitive"][0]["output_nsr"] >= log["most_sensitive"][-1][
        "output_nsr"]


def test_force_replaces_atomically_and_keeps_fp32(sm_entry, shapes_split):
    quantize(_cfg(sm_entry, shapes_split, calib_count=4))
    first = Manifest.load(sm_entry)
    fp32_bytes = (sm_entry / first.variants["fp32"].file).read_bytes()
    quantize(_cfg(sm_entry, shapes_split, calib_count=6, calib_method="entropy", force=True))
    second = Manifest.load(sm_entry)
    assert second.variants["int8"].settings["int8"]["calib_method"] == "entropy"
    assert second.variants["int8"].sha256 == sha256_file(sm_entry / second.variants["int8"].file)
    assert (sm_entry / second.variants["fp32"].file).read_bytes() == fp32_bytes
    assert not [p for p in sm_entry.iterdir() if p.name.startswith(".detzoo-tmp-")]


def test_per_tensor_and_reduce_range_are_recorded(sm_entry, shapes_split):
    quantize(_cfg(sm_entry, shapes_split, fp16=False, calib_count=4, per_channel=False, reduce_range=True))
    s = Manifest.load(sm_entry).variants["int8"].settings
    assert s["int8"]["per_channel"] is False and s["int8"]["reduce_range"] is True
    assert s["int8"]["weight_passes"]["gemm_weights"] == "7-bit [-64, 64]"
    assert s["portability"]["saturation_safe"] and s["portability"]["largest_pair_sum"] <= 128


def test_int8_bytes_do_not_depend_on_the_cpu_class(sm_fp32_dir, shapes_split, tmp_path, monkeypatch):
    """One artifact for every CPU: forcing each class gives the same bytes, and the class is recorded."""
    shas = {}
    for cls in ("vnni", "avx2", "arm"):
        monkeypatch.setenv("DETZOO_CPU_CLASS", cls)
        entry = _copy(sm_fp32_dir, tmp_path, f"entry_{cls}")
        quantize(_cfg(entry, shapes_split, fp16=False, calib_count=4))
        v = Manifest.load(entry).variants["int8"]
        assert v.settings["machine"]["cpu_class"] == cls and v.settings["machine"]["cpu_class_forced"]
        assert v.settings["speed_probe"]["cpu_class"] == cls
        shas[cls] = v.sha256
    assert len(set(shas.values())) == 1, shas


def test_vnni_target_keeps_full_8_bit_weights_and_says_it_is_not_portable(sm_entry, shapes_split):
    res = quantize(_cfg(sm_entry, shapes_split, fp16=False, calib_count=4, int8_target="vnni"))
    s = Manifest.load(sm_entry).variants["int8"].settings
    assert s["int8"]["target"] == "vnni" and s["int8"]["weight_passes"]["gemm_weights"] == "8-bit [-127, 127]"
    assert not s["portability"]["saturation_safe"] and s["portability"]["largest_pair_sum"] > 128
    assert any("saturate on x86 CPUs without VNNI" in w for w in res.warnings)
    assert any("NOT saturation-safe" in line for line in res.int8_lines())


def test_fp32_batch1_variant_is_parity_checked(sm_entry, shapes_split):
    res = quantize(_cfg(sm_entry, shapes_split, fp16=False, int8=False, fp32_batch1=True))
    m = Manifest.load(sm_entry)
    v = m.variants["fp32_batch1"]
    assert v.file == f"{m.name}.fp32-batch1.onnx" and v.precision == "fp32" and v.parent == "fp32"
    assert v.checks["parity"]["passed"] and v.checks["parity"]["max_score_diff"] <= 1e-4
    assert res.fidelity["fp32_batch1"]["fidelity_ap"] == 1.0
    model = onnx.load(sm_entry / v.file)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_same_input_gives_byte_identical_artifacts(sm_fp32_dir, shapes_split, tmp_path):
    shas = []
    for k in range(2):
        entry = _copy(sm_fp32_dir, tmp_path, f"entry{k}")
        quantize(_cfg(entry, shapes_split, calib_count=4))
        m = Manifest.load(entry)
        shas.append((m.variants["fp16"].sha256, m.variants["int8"].sha256))
    assert shas[0] == shas[1]
