"""``detzoo convert`` against bare tf2onnx on the real pedestrian graph: wall time and peak memory.

Both run as fresh processes (Python start and imports included, as a user sees them), alternating
which goes first in each repeat. detzoo's run includes everything it adds: the source's sha256,
the unsafe-op scan, IO detection, contract enforcement, canonical ONNX, atomic save, manifest and
the parity check on the 40 demo frames. The baseline is what a user would write by hand:
``tf2onnx.convert.from_graph_def`` (the call detzoo makes) and ``onnx.save``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.util import child_env, median, python, run_measured, spread

BARE = """
import sys
import tensorflow as tf, tf2onnx, onnx
src, out = sys.argv[1], sys.argv[2]
gd = tf.compat.v1.GraphDef.FromString(open(src, "rb").read())
model, _ = tf2onnx.convert.from_graph_def(gd, input_names=["image_tensor:0"],
    output_names=["num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0"], opset=17)
onnx.save(model, out)
"""


def _detzoo_cmd(src: Path, out: Path, threads: int) -> list[str]:
    return [python(), "-m", "detzoo.cli", "convert", str(src), "--out", str(out), "--threads", str(threads)]


def bench(repeats: int = 3, threads_list=(1, 2), keep: Path | None = None) -> dict:
    """Per thread count: median wall seconds and peak RSS of each, and their ratios.

    ``keep``: copy one detzoo output folder there (the verify benchmark reuses it).
    """
    from detzoo.defaults import default_model_path

    src = default_model_path()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="detzoo-bench-convert-") as tmp:
        tmp = Path(tmp)
        for threads in threads_list:
            env = child_env(threads)
            runs = {"detzoo": [], "tf2onnx": []}
            for r in range(repeats):
                order = ("detzoo", "tf2onnx") if r % 2 == 0 else ("tf2onnx", "detzoo")
                for tool in order:
                    out = tmp / f"{tool}-{threads}-{r}"
                    if tool == "detzoo":
                        res = run_measured(_detzoo_cmd(src, out, threads), env)
                    else:
                        out.mkdir()
                        res = run_measured([python(), "-c", BARE, str(src), str(out / "model.onnx")], env)
                    if res["rc"] != 0:
                        raise RuntimeError(f"{tool} convert failed (exit {res['rc']}): {res['output'][-2000:]}")
                    if tool == "detzoo":
                        m = json.loads((out / "manifest.json").read_text())
                        parity = m["variants"]["fp32"]["checks"]["parity"]
                        if not parity["passed"]:
                            raise RuntimeError("detzoo parity check failed in the benchmark")
                        res["parity_images"] = parity["images"]
                        if keep is not None and not keep.exists():
                            shutil.copytree(out, keep)
                    runs[tool].append(res)
                    shutil.rmtree(out, ignore_errors=True)
            d, b = runs["detzoo"], runs["tf2onnx"]
            rows[threads] = {
                "repeats": repeats,
                "detzoo_s": median([x["wall_s"] for x in d]), "tf2onnx_s": median([x["wall_s"] for x in b]),
                "time_ratio": median([x["wall_s"] / y["wall_s"] for x, y in zip(d, b)]),
                "ratio_spread": spread([x["wall_s"] / y["wall_s"] for x, y in zip(d, b)]),
                "detzoo_rss_mb": median([x["peak_rss_mb"] for x in d]),
                "tf2onnx_rss_mb": median([x["peak_rss_mb"] for x in b]),
                "rss_ratio": median([x["peak_rss_mb"] / y["peak_rss_mb"] for x, y in zip(d, b)]),
                "parity_images": d[0]["parity_images"],
            }
    return {"source": str(src), "rows": rows}


if __name__ == "__main__":
    print(json.dumps(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 1), indent=2))
