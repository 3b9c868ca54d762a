"""``detzoo build``: convert -> quantize -> verify in one run, then the zoo entry's pictures and card.

The one command a zoo maintainer runs. With no source it builds the embedded default: the real
pedestrian SSDLite graph, calibrated on the demo calibration frames and verified in reference
mode on the demo evaluation frames (the two never overlap).

Owns: the order of the stages and the entry's pages. Does not touch: any stage's internals; it
calls convert, quantize and verify through their configs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from detzoo.errors import CheckFailed, DetzooError
from detzoo import options
from detzoo.options import FORCE, MeasureOptions

if TYPE_CHECKING:
    from detzoo.verify.report import VerifyReport

PRECISIONS = tuple(options.PRECISIONS.default.split(","))  # fp32, fp16, int8


@dataclass
class BuildConfig(MeasureOptions):
    """The entry to build; the measuring options (``MeasureOptions``) go to verify as they are."""

    out: Path
    source: Path | None = None
    calib_images: Path | None = None
    precisions: list = field(default_factory=lambda: list(PRECISIONS))
    force: bool = FORCE.default
    input_sizes: list = field(default_factory=list)  # fixed-size variants, as convert --input-size

    def __post_init__(self):
        from detzoo.contract import parse_size

        self.out = Path(self.out)
        super().__post_init__()
        self.input_sizes = [parse_size(s) if isinstance(s, str) else tuple(s) for s in self.input_sizes or ()]
        self.precisions = [p.strip() for p in self.precisions if p and p.strip()]
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise DetzooError(f"--precisions takes a comma list of {', '.join(PRECISIONS)}; got "
                              f"{','.join(self.precisions) or 'nothing'}")
        if "fp32" not in self.precisions:  # every variant is made from the fp32 artifact
            self.precisions.insert(0, "fp32")


@dataclass
class BuildResult:
    folder: Path
    report: "VerifyReport"
    seconds: dict
    passed: bool


def build(cfg: BuildConfig, console=None) -> BuildResult:
    """Run every stage into ``cfg.out``; raises CheckFailed (after writing everything) if the gate fails."""
    from detzoo.convert import ConvertConfig, convert
    from detzoo.defaults import DEFAULT_LABEL_MAP, default_model_path
    from detzoo.verify import VerifyConfig, verify

    def say(msg):
        if console is not None:
            console.print(msg, highlight=False)

    seconds, t0 = {}, time.perf_counter()
    source = cfg.source or default_model_path()
    # In reference mode the user's images (if any) also serve the parity check.
    check_images = cfg.images if cfg.annotations is None else None
    say(f"[bold]convert[/] {source}")
    conv = convert(ConvertConfig(source=source, out=cfg.out, force=cfg.force, threads=cfg.threads,
                                 check_images=check_images, allow_unsafe_ops=cfg.allow_unsafe_ops,
                                 input_sizes=cfg.input_sizes,
                                 label_map=DEFAULT_LABEL_MAP if cfg.source is None else None))
    seconds["convert"] = round(time.perf_counter() - t0, 2)
    if conv.parity:
        say(f"  {conv.parity.summary()}")
    quantized = [p for p in cfg.precisions if p != "fp32"]
    precisions = list(cfg.precisions)
    if conv.variant != "fp32":  # an integer source: its conversion is the int8 variant, not re-quantized
        say(f"  the source is an integer model: {conv.artifact.name} is the {conv.variant} variant; "
            "nothing to quantize")
        quantized, precisions = [], [conv.variant]
    if quantized:
        from detzoo.quantize import QuantizeConfig, quantize

        t = time.perf_counter()
        say(f"[bold]quantize[/] {', '.join(quantized)}")
        # The accuracy-aware int8 search checks on held-out images: the demo check frames by default
        # (disjoint from calibration and evaluation), else the user's evaluation images (verify warns).
        quantize(QuantizeConfig(folder=cfg.out, fp16="fp16" in quantized, int8="int8" in quantized,
                                allow_unsafe_ops=cfg.allow_unsafe_ops,
                                calib_images=cfg.calib_images, check_images=cfg.images, threads=cfg.threads,
                                max_drop=cfg.max_drop if "int8" in quantized else None, force=True,
                                feed_size=cfg.feed_size),
                 progress=lambda msg: say(f"  {msg}"))
        seconds["quantize"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    say("[bold]verify[/]")
    if cfg.input_sizes and not cfg.feed_size:
        say("  fixed-size variants are verified with --feed-size of their size (the zoo's feeding, the same "
            "pixels for every model): 'detzoo verify DIR --feed-size HxW'")
    failure = None
    try:
        verify(VerifyConfig(folder=cfg.out, **cfg.measure_options(),
                            variants=built_variants(cfg.out, precisions, cfg.feed_size)), console)
    except CheckFailed as e:  # the report is written; finish the entry, then fail
        failure = e
    seconds["verify"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    report = write_entry_pages(cfg.out)
    seconds["pages"] = round(time.perf_counter() - t, 2)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    if failure is not None:
        raise failure
    return BuildResult(cfg.out, report, seconds, passed=True)


def built_variants(folder: Path, precisions: list, feed_size) -> list:
    """The variants build verifies: the precisions asked for, and their fixed-size twins when
    ``--feed-size`` is their size. A fixed-size variant fed the zoo's way beside a source fed its own
    way would be charged the feeding's loss (BENCHMARKS.md, "zoo contract", "Fixed-size fidelity is the feeding's"),
    not the conversion's; with --feed-size every model gets the same pixels."""
    from detzoo.manifest import Manifest

    m = Manifest.load(folder)
    out = []
    for n, v in m.variants.items():
        hw = m.variant_io(n).input.fixed_hw
        if n.split("-")[0] in precisions and (hw is None or (feed_size and list(hw) == list(feed_size))):
            out.append(n)
    return out


def report_records(report):
    """The image records a report was computed on (same ids as verify used)."""
    from detzoo.coco import coco_records, load_instances
    from detzoo.images import folder_records

    data = report.data
    if data.annotations:
        recs = coco_records(load_instances(data.annotations), data.images_dir, data.limit)
    else:
        recs = folder_records(data.images_dir, data.limit)
    wanted = set(data.image_ids)
    return [r for r in recs if r.image_id in wanted]


def write_entry_pages(folder: Path):
    """``report.html`` and the ``README.md`` model card, from manifest.json and report.json."""
    from detzoo.fsutil import atomic_write_text
    from detzoo.manifest import Manifest
    from detzoo.verify.card import render_card
    from detzoo.verify.html import render_html
    from detzoo.verify.report import VerifyReport

    folder = Path(folder)
    m = Manifest.load(folder)
    report = VerifyReport.load(folder)
    from detzoo.verify.core import cache_io

    feed = report.data.feed_size
    ios = {n: cache_io(m, n, feed) for n in report.models if n == "source" or n in m.variants}
    atomic_write_text(folder / "report.html", render_html(folder, report, report_records(report), ios))
    atomic_write_text(folder / "README.md", render_card(m, report, folder))
    return report
