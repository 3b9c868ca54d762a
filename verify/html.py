"""``report.html``: the report as pictures, self-contained (images embedded) and offline.

Built from ``report.json`` and the per-image detection cache alone: the summary table, PR curves
of every model on one plot, per-category AP, latency distributions, the accuracy/latency
trade-off, and the demo images where an artifact disagrees most with its source, side by side.

Owns: report.html's markup and plots. Does not touch: measurement or report.json.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from detzoo.detections import Detections, agreement
from detzoo.verify.report import VerifyReport

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
PAGE_CHECK = """<script>
window.__detzoo_errors = [];
window.addEventListener('error', e => window.__detzoo_errors.push(String(e.message || e)));
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.dataset.images = imgs.length;
  document.body.dataset.broken = broken;
  document.body.dataset.errors = window.__detzoo_errors.length;
});
</script>"""
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.fail{color:#b00;font-weight:bold}
.pass{color:#070;font-weight:bold}figure{margin:1.5em 0}img{max-width:100%}.pair{display:flex;gap:8px}
.pair figure{margin:0;flex:1}figcaption{font-size:13px;color:#555}"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_tag(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _plots(report: VerifyReport) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report.models
    names = list(models)
    metric = "fidelity AP" if report.reference else "AP"
    out = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, n in enumerate(names):
        coco = models[n].coco
        rec = coco.recall_thresholds
        for label, style in (("0.50:0.95", "-"), ("0.50", ":")):
            curve = np.asarray(coco.pr_curves[label], dtype=float)
            ax.plot(np.asarray(rec)[curve >= 0], curve[curve >= 0], style, color=COLOURS[i % len(COLOURS)],
                    label=f"{n} (IoU {label})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="Precision-recall, mean over categories (area all, 100 detections)")
    ax.legend(fontsize=8)
    out.append(("Precision-recall curves", _png(fig)))

    cats = [c for c in models["source"].coco.per_category if c["AP"] >= 0]
    cats = sorted(cats, key=lambda c: -c["AP"])[:30]
    if cats:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(cats) * len(names) / 2 + 1.5))
        y = np.arange(len(cats))
        h = 0.8 / len(names)
        for i, n in enumerate(names):
            ap = {c["id"]: c["AP"] for c in models[n].coco.per_category}
            ax.barh(y + i * h, [max(ap.get(c["id"], 0), 0) for c in cats], h, label=n,
                    color=COLOURS[i % len(COLOURS)])
        ax.set_yticks(y + h * (len(names) - 1) / 2, [c["name"] for c in cats])
        ax.invert_yaxis()
        ax.set(xlabel=f"{metric} @[.5:.95]", xlim=(0, 1), title="Per-category AP")
        ax.legend(fontsize=8)
        out.append(("Per-category AP", _png(fig)))

    timed = [n for n in names if models[n].latency]
    if timed:
        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.arange(len(timed))
        for j, (q, key) in enumerate((("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))):
            ax.bar(x + j * 0.27, [getattr(models[n].latency, key) for n in timed], 0.27, label=q)
        ax.set_xticks(x + 0.27, timed)
        ax.legend()
        threads = report.latency.threads if report.latency else "?"
        ax.set(ylabel="ms per image (batch 1)", title=f"Latency, {threads} thread(s)")
        out.append(("Latency distribution", _png(fig)))

        fig, ax = plt.subplots(figsize=(6, 4))
        for i, n in enumerate(timed):
            m = models[n]
            ax.scatter(m.latency.p50_ms, m.stats["AP"], s=60, color=COLOURS[i % len(COLOURS)])
            ax.annotate(f"{n} ({m.size / 1e6:.1f} MB)", (m.latency.p50_ms, m.stats["AP"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=9)
        ax.set(xlabel="p50 latency, ms", ylabel=f"{metric} @[.5:.95]", title="Accuracy / latency trade-off")
        ax.set_xlim(left=0)
        out.append(("Accuracy / latency trade-off", _png(fig)))
    return out


def _draw(image: np.ndarray, det: Detections, threshold: float, colour: str, width: int = 520) -> str:
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    scale = width / im.width
    im = im.resize((width, max(1, round(im.height * scale))), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()):
        if s < threshold:
            continue
        box = [x1 * scale, y1 * scale, x2 * scale, y2 * scale]
        d.rectangle(box, outline=colour, width=2)
        d.text((box[0] + 2, box[1] + 1), f"{c}:{s:.2f}", fill=colour)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _examples(folder: Path, report: VerifyReport, records, cache_ios: dict, count: int) -> list[str]:
    """Side-by-side images where an artifact's detections disagree most with the source's."""
    from detzoo.images import ImageError, decode_image
    from detzoo.verify.cache import DetectionCache, image_sha256

    models = report.models
    thr = report.reference_threshold
    caches = {n: DetectionCache(folder, m.sha256, cache_ios[n]) for n, m in models.items()}
    scored = []
    for rec in records:
        try:
            sha = image_sha256(rec.path)
        except OSError:
            continue
        src = caches["source"].get(rec.image_id, sha)
        if src is None:
            continue
        for n in models:
            if n == "source" or (hit := caches[n].get(rec.image_id, sha)) is None:
                continue
            a = agreement([(rec.key, src.hw, src.detections, hit.detections)], min_score=thr)
            score = a.unmatched_reference + a.unmatched_candidate + a.max_score_diff + a.max_box_diff
            scored.append((score, rec.image_id, n, rec, src.detections, hit.detections))
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    seen, out = set(), []
    for score, _, n, rec, sdet, adet in scored:
        if rec.image_id in seen or len(out) >= count:
            continue
        try:
            image = decode_image(rec.path)
        except ImageError:
            continue
        seen.add(rec.image_id)
        out.append(
            f'<div class="pair"><figure>{_img_tag(_draw(image, sdet, thr, "#1f77b4"), rec.key)}'
            f"<figcaption>source on {html.escape(rec.key)}</figcaption></figure>"
            f'<figure>{_img_tag(_draw(image, adet, thr, "#d62728"), rec.key)}'
            f"<figcaption>{html.escape(n)} on {html.escape(rec.key)} (disagreement {score:.3f})"
            f"</figcaption></figure></div>")
    return out


def _table(head: list, rows: list) -> str:
    """A table's header and rows (the same ones REPORT.md prints) as HTML."""
    th = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def render_html(folder: Path, report: VerifyReport, records, cache_ios: dict, examples: int = 3) -> str:
    """``cache_ios``: each model's cache key (``verify.core.cache_io``), where its detections are read."""
    from detzoo.verify.markdown import coco_rows, summary_rows

    gate = report.gate
    verdict = ('<span class="pass">passed</span>' if gate.passed
               else f'<span class="fail">FAILED: {html.escape(", ".join(gate.failed))}</span>')
    mode = ("reference mode: scored against the source model's detections >= "
            f"{report.reference_threshold}" if report.reference else "ground-truth mode")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>detzoo: {html.escape(report.name)}"
             f"</title><style>{STYLE}</style>{PAGE_CHECK}</head><body>",
             f"<h1>{html.escape(report.name)}</h1>",
             f"<p>{html.escape(mode)}; {report.data.evaluated} images; gate {verdict} "
             f"(max drop {gate.max_drop_points:g} points of {html.escape(gate.metric)}).</p>",
             "<h2>Summary</h2>", _table(*summary_rows(report))]
    for title, src in _plots(report):
        parts.append(f"<figure><h2>{html.escape(title)}</h2>{_img_tag(src, title)}</figure>")
    ex = _examples(folder, report, records, cache_ios, examples)
    if ex:
        parts.append("<h2>Where the artifacts disagree most with the source</h2>")
        parts.extend(ex)
    for name, m in report.models.items():
        parts.append(f"<h2>{html.escape(name)}: {html.escape(m.framework)}, {html.escape(m.precision)}</h2>")
        parts.append(_table(*coco_rows(m.stats)))
    parts.append("</body></html>")
    return "\n".join(parts)
