"""The real pedestrian SSDLite: the issue's targets for fp16 and int8, the plan, the accuracy search."""

from __future__ import annotations

import shutil
import numpy as np
import onnx
import pytest

from detzoo.images import decode_image, demo_dir, list_images
from detzoo.manifest import Manifest
from detzoo.quantize import QuantizeConfig, quantize
from detzoo.runners import OrtRunner, preprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quantized(real_fp32_dir, tmp_path_factory):
    entry = tmp_path_factory.mktemp("real_q") / "entry"
    shutil.copytree(real_fp32_dir, entry)
    res = quantize(QuantizeConfig(folder=entry))
    return entry, res


def test_fp16_targets(quantized):
    entry, res = quantized
    m = Manifest.load(entry)
    fp16, fp32 = m.variants["fp16"], m.variants["fp32"]
    assert res.fidelity["fp16"]["fidelity_ap"] >= 0.98
    assert abs(fp16.size / fp32.size - 0.5) <= 0.05  # half the size within 10%
    model = onnx.load(entry / fp16.file)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    # One Loop over the batch at the top; inside it the batch-1 build, its own map_fn Loops inlined.
    assert [n.op_type for n in model.graph.node if n.op_type == "Loop"] == ["Loop"]
    ops = {n.op_type for n in _body(model).node}
    assert "Loop" not in ops and "NonMaxSuppression" in ops
    assert fp16.settings["batch"] == "any" and fp16.checks["batch"]["max_score_diff"] <= 1e-4


def _body(model):
    return next(a.g for n in model.graph.node if n.op_type == "Loop" for a in n.attribute
                if a.g.name == "detzoo_contract_body")


def test_quantized_variants_take_a_batch_of_four_like_four_batches_of_one(quantized):
    """What the zoo's runner does with -b 4: every row must be the image's own detections."""
    entry, _ = quantized
    m = Manifest.load(entry)
    images = [decode_image(p) for p in list_images(demo_dir("eval"))[:4]]
    for name in ("fp16", "int8"):
        with OrtRunner(entry / m.variants[name].file, m.io) as run:
            together = run.infer(np.stack(images))
            assert together[1].shape[0] == 4
            for i, img in enumerate(images):
                alone = run.infer(img[None])
                assert int(alone[0][0]) == int(together[0][i]) and int(alone[0][0]) > 0
                np.testing.assert_allclose(together[2][i], alone[2][0], atol=1e-4)
                np.testing.assert_allclose(together[1][i][:int(alone[0][0])], alone[1][0][:int(alone[0][0])],
                                           atol=1e-4)


def test_int8_targets_and_plan(quantized):
    entry, res = quantized
    m = Manifest.load(entry)
    s = m.variants["int8"].settings
    # The portable artifact computes the same on every CPU class, so one floor holds everywhere.
    assert res.fidelity["int8"]["fidelity_ap"] >= 0.97 and res.fidelity["int8"]["fidelity_ap50"] >= 0.98
    assert [lp["inlined"] for lp in s["batch1"]["loops"]] == [True, True]
    regions = s["plan"]["regions"]
    assert regions["network"]["ops"]["Conv"] == 88
    # The preprocessing resize computes TF's formula (convert/exact_resize.py): gathers and lerps, no Resize.
    assert {"Gather", "Floor"} <= set(regions["preprocessing"]["ops"]) and "Resize" not in regions["preprocessing"]["ops"]
    assert "Exp" in regions["box_decoding"]["ops"]
    assert {"NonMaxSuppression", "TopK"} <= set(regions["selection"]["ops"])
    assert len(s["excluded_nodes"]) == 2 and all("image-facing" in w for w in s["excluded_nodes"].values())
    assert s["calibration"]["count"] == 25 and not s["calibration"]["overlap_with_check_images"]
    assert s["machine"]["int8_dot_product"] == ("avx512_vnni" in s["machine"]["flags"]
                                                or "avx_vnni" in s["machine"]["flags"])
    ops = [n.op_type for n in _body(onnx.load(entry / m.variants["int8"].file)).node]
    assert ops.count("Clip") <= 2  # Relu6 folded into the quantization range everywhere but the float stem
    port = s["portability"]
    assert port["saturation_safe"] and port["largest_pair_sum"] <= 128 and port["depthwise_weights"] == 33
    assert s["int8"]["weight_passes"]["bias_correction"] and s["int8"]["target"] == "portable"
    assert s["speed_probe"]["cpu_class"] == s["machine"]["cpu_class"]


def test_batch1_specialization_is_exact(real_fp32_dir, tmp_path):
    from detzoo.quantize.prepare import run as prepare

    m = Manifest.load(real_fp32_dir)
    fp32 = real_fp32_dir / m.variants["fp32"].file
    prepared, report, _ = prepare(fp32, tmp_path)
    assert all(lp.inlined for lp in report.loops)
    with OrtRunner(fp32, m.io) as a, OrtRunner(prepared, m.io) as b:
        for p in list_images(demo_dir("eval"))[:5]:
            batch = preprocess(decode_image(p), m.io)
            for x, y in zip(a.infer(batch), b.infer(batch)):
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_max_drop_search_on_the_real_model(real_fp32_copy):
    res = quantize(QuantizeConfig(folder=real_fp32_copy, fp16=False, max_drop=1.0))
    log = res.search
    assert log["met"] and res.fidelity["int8"]["drop_points"] <= log["target_points"] == 0.5
    assert len(log["steps"]) >= 2 and log["steps"][0]["drop_points"] > 0.5   # bias-corrected int8: ~1.6 points
    s = Manifest.load(real_fp32_copy).variants["int8"].settings
    assert s["accuracy_search"]["most_sensitive"][0]["output_nsr"] > 0
    for step in log["steps"][1:]:
        assert all(n in s["excluded_nodes"] for n in step["returned_to_float"])


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(real_fp32_copy, method):
    res = quantize(QuantizeConfig(folder=real_fp32_copy, fp16=False, calib_method=method, calib_count=12))
    assert res.fidelity["int8"]["fidelity_ap"] >= 0.95
    s = Manifest.load(real_fp32_copy).variants["int8"].settings
    assert s["int8"]["calib_method"] == method and s["calibration"]["count"] == 12
