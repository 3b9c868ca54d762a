"""Every option a user sets, declared once: its flag, default, bounds and help.

Owns: the declarations and their range check. The config dataclasses (ConvertConfig,
VerifyConfig, BuildConfig, ...) take their defaults from here and check their values with
``check``; the CLI builds its typer options with ``Opt.cli``. Does not touch: what an option
does, and typer itself until ``cli()`` is called (``detzoo --help`` stays fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detzoo.errors import DetzooError


@dataclass(frozen=True)
class Opt:
    """One option. ``low``/``high``: inclusive bounds; ``integer``: must be a whole number."""

    flag: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    unit: str = ""               # said after a bound in the message ("points")
    envvar: str | None = None
    short: str | None = None     # a second flag, e.g. "-b"

    @property
    def attr(self) -> str:
        return self.flag.split("/")[0].lstrip("-").replace("-", "_")

    def cli(self, default=..., help: str | None = None):
        """A typer option with this flag, default and help (``default``/``help``: a command's own)."""
        import typer

        decls = [self.flag] + ([self.short] if self.short else [])
        return typer.Option(self.default if default is ... else default, *decls, help=help or self.help,
                            envvar=self.envvar, show_default=True)

    def check(self, value) -> None:
        """DetzooError in one line naming the flag, the value and what it takes; None passes (unset)."""
        if value is None:
            return
        unit = f" {self.unit}" if self.unit else ""
        if self.integer and (isinstance(value, bool) or not isinstance(value, int)):
            raise DetzooError(f"{self.flag} must be an integer, got {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise DetzooError(f"{self.flag} must be a number, got {value!r}")
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise DetzooError(f"{self.flag} must be between {self.low:g} and {self.high:g}{unit}, got {value!r}")
        if self.low is not None and value < self.low:
            raise DetzooError(f"{self.flag} must be >= {self.low:g}{unit}, got {value!r}")
        if self.high is not None and value > self.high:
            raise DetzooError(f"{self.flag} must be <= {self.high:g}{unit}, got {value!r}")


def check(obj, *opts: Opt) -> None:
    """Check each option's attribute of a config object (named after its flag)."""
    for o in opts:
        o.check(getattr(obj, o.attr))


# --- shared by several commands -------------------------------------------------------------
THREADS = Opt("--threads", 1, "Intra-op threads for TF and onnxruntime", low=1, integer=True)
ALLOW_UNSAFE_OPS = Opt("--allow-unsafe-ops", False, "Run models with file/Python ops")
FORCE = Opt("--force", False, "Replace artifacts already in the folder")
INPUT_SIZE = Opt("--input-size", None, "Also a variant with height and width fixed, e.g. 300x300 (repeatable)")
QUIET = Opt("--quiet", False, "No progress bars, warnings or summary")

# --- convert -------------------------------------------------------------------------------
OPSET = Opt("--opset", 17, "ONNX opset", low=13, high=18, integer=True)
CHECK = Opt("--check/--no-check", True, "Parity check against the source")
CHECK_LIMIT = Opt("--check-limit", None, "Use at most N check images", low=1, integer=True)
SCORE_ATOL = Opt("--score-atol", None, "Parity: max |score diff| of matched detections [default: "
                 "--parity-noise-factor x the network's one-ulp noise, at least 1e-4; an integer TFLite source: "
                 "2 of its output quantization steps]")
BOX_ATOL = Opt("--box-atol", None, "Parity: max |box diff|, in units of image size [default: as --score-atol]")
PARITY_MIN_SCORE = Opt("--parity-min-score", 0.3, "Parity: compare detections scoring at least this")
MAX_UNMATCHED = Opt("--max-unmatched", 0, "Parity: detections allowed without a counterpart", low=0, integer=True)
PARITY_NOISE_FACTOR = Opt("--parity-noise-factor", 4.0, "Parity: default atols are this many times the score "
                          "and box change from moving every weight by one ulp (0: a fixed 1e-4)", low=0.0)

# --- quantize ------------------------------------------------------------------------------
FP16 = Opt("--fp16/--no-fp16", True, "Build <name>.fp16.onnx")
INT8 = Opt("--int8/--no-int8", True, "Build <name>.int8.onnx")
CALIB_IMAGES = Opt("--calib-images", None, "Calibration images (default: demo calib frames)")
CALIB_COUNT = Opt("--calib-count", None, "Use the first N usable calibration images (default: all, at most 256)",
                  low=1, integer=True)
CALIB_METHOD = Opt("--calib-method", "minmax", "minmax, entropy or percentile")
PER_CHANNEL = Opt("--per-channel/--no-per-channel", True, "Per-channel int8 weights")
INT8_TARGET = Opt("--int8-target", "portable", "portable: exact on every CPU (no u8 x s8 pair can saturate without "
                  "VNNI); vnni: full 8-bit weights, for VNNI/ARM only")
REDUCE_RANGE = Opt("--reduce-range/--no-reduce-range", None, "--reduce-range: 7-bit weights everywhere (default: "
                   "the target's bound)")
BIAS_CORRECTION = Opt("--bias-correction/--no-bias-correction", True,
                      "int8: subtract the mean output shift of quantized weights")
ADAROUND = Opt("--adaround/--no-adaround", False, "int8: optimize weight rounding layer by layer (slower)")
CLE = Opt("--cle/--no-cle", False, "int8: cross-layer equalization first (see BENCHMARKS.md)")
SEARCH_MAX_DROP = Opt("--max-drop", None, "int8: largest fidelity AP drop, in points; returns the most sensitive "
                      "nodes to float until it fits", low=0, high=100, unit="AP points")
CHECK_IMAGES = Opt("--check-images", None, "Held-out images for fidelity (default: demo eval frames)")
FP32_BATCH1 = Opt("--fp32-batch1", False, "Also add <name>.fp32-batch1.onnx: fp32 with Loops inlined "
                  "(parity-checked)")

# --- build ---------------------------------------------------------------------------------
PRECISIONS = Opt("--precisions", "fp32,fp16,int8", "Variants to build and verify")

# --- verify (and build, merge, reverify) ----------------------------------------------------
IMAGES = Opt("--images", None, "Images folder (default without annotations: demo frames)", envvar="COCO_IMG_PATH")
ANNOTATIONS = Opt("--annotations", None, "COCO instances JSON (ground-truth mode)", envvar="COCO_ANNO_PATH")
LIMIT = Opt("--limit", None, "First N images (by image id with annotations)", low=1, integer=True)
LATENCY_RUNS = Opt("--latency-runs", 50, "Timed runs per model (0: no latency)", low=0, integer=True)
LATENCY_IMAGES = Opt("--latency-images", 8, "Images the latency runs cycle over", low=1, integer=True)
MAX_DROP = Opt("--max-drop", 1.0, "Largest allowed mAP drop, in points", low=0, unit="points")
BOOTSTRAP = Opt("--bootstrap", 0, "Resamples for a 95% CI on the drop (0: none)", low=0, integer=True)
SEED = Opt("--seed", 0, "Seed of the bootstrap", integer=True)
REFERENCE_THRESHOLD = Opt("--reference-threshold", 0.5, "Reference mode: source detections >= this are the truth")
BATCH = Opt("--batch", 1, "Latency and throughput at this batch size", low=1, integer=True, short="-b")
FEED_SIZE = Opt("--feed-size", None, "Resize every image to HxW first, as the zoo's runner does (OpenCV bilinear), "
                "e.g. 640x640")
VARIANTS = Opt("--variants", None, "Variants to verify, e.g. fp32,int8")
DRIFT_TOLERANCE = Opt("--tolerance", 0.002, "Allowed move of a COCO stat (AP units)", low=0)


@dataclass(kw_only=True)
class MeasureOptions:
    """How verify measures, shared by ``VerifyConfig`` and ``BuildConfig`` (build passes them on)."""

    images: object = IMAGES.default
    annotations: object = ANNOTATIONS.default
    limit: int | None = LIMIT.default
    threads: int = THREADS.default
    latency_runs: int = LATENCY_RUNS.default
    max_drop: float = MAX_DROP.default
    bootstrap: int = BOOTSTRAP.default
    allow_unsafe_ops: bool = ALLOW_UNSAFE_OPS.default
    feed_size: tuple | None = FEED_SIZE.default   # (h, w): resize every image first, as the zoo's runner does
    batch: int = BATCH.default

    def __post_init__(self):
        from pathlib import Path

        self.images = Path(self.images) if self.images else None
        self.annotations = Path(self.annotations) if self.annotations else None
        if self.annotations is not None and self.images is None:
            raise DetzooError(f"--annotations {self.annotations} needs --images (or COCO_IMG_PATH): "
                              "the folder its file_name entries refer to")
        if self.feed_size is not None:
            from detzoo.contract import parse_size

            self.feed_size = (parse_size(self.feed_size, "--feed-size") if isinstance(self.feed_size, str)
                              else tuple(int(x) for x in self.feed_size))
        check(self, LIMIT, THREADS, LATENCY_RUNS, MAX_DROP, BOOTSTRAP, BATCH)

    def measure_options(self) -> dict:
        """These fields as keywords, to build another MeasureOptions (build -> verify)."""
        from dataclasses import fields

        return {f.name: getattr(self, f.name) for f in fields(MeasureOptions)}
