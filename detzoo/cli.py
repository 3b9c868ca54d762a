"""The ``detzoo`` command line: each command parses, calls one library function, prints.

Heavy libraries are imported inside the commands so ``detzoo --help`` is instant. User errors are
printed as one line without a traceback: exit 2 for bad input, exit 1 for a failed check; anything
else is detzoo's own failure: exit 3, one line, the traceback in a log file.

Owns: argument parsing, exit codes and printing. Does not touch: defaults or bounds (detzoo.options)
or any logic a library function can hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

from detzoo import options as O
from detzoo.errors import CheckFailed, DetzooError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="TensorFlow object-detection models to verified ONNX model-zoo artifacts.")


def _fail(e: DetzooError) -> None:
    msg = " ".join(str(e).split()) or type(e).__name__
    typer.echo(f"detzoo: error: {msg}", err=True)
    raise typer.Exit(e.exit_code)


def _summary(folder: Path) -> str:
    """Mode, gate and the summary table, rendered from report.json (not read back from REPORT.md)."""
    from detzoo.verify.markdown import render_summary
    from detzoo.verify.report import VerifyReport

    return "\n".join(render_summary(VerifyReport.load(folder))).rstrip()


@contextlib.contextmanager
def _user_errors(folder: Optional[Path] = None, quiet: bool = False):
    """Bad input: one line, exit 2. A failed check: the report's summary (if any), one line, exit 1."""
    try:
        yield
    except CheckFailed as e:
        if folder is not None and not quiet and (folder / "report.json").is_file():
            typer.echo(_summary(folder))
        _fail(e)
    except DetzooError as e:
        _fail(e)


@app.callback()
def _root():
    """TensorFlow object-detection models to verified ONNX model-zoo artifacts."""
    from detzoo.cpu import cpu_class

    try:
        cpu_class()  # a bad DETZOO_CPU_CLASS is bad input before any work starts
    except DetzooError as e:
        _fail(e)


def _split_names(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


@app.command()
def inspect(source: Path = typer.Argument(..., help="Frozen graph .pb, export folder, SavedModel, .tflite or .tar.gz"),
            input: Optional[str] = typer.Option(None, "--input", help="Input tensor name"),
            output: Optional[List[str]] = typer.Option(None, "--output", help="4 output names, contract order"),
            as_json: bool = typer.Option(False, "--json", help="Print JSON")):
    """Print what detzoo detects in a model: format, IO, op census, control flow, NMS, refusals."""
    from detzoo.convert.inspect import inspect_model, inspect_onnx

    try:
        onnx_file = source.suffix.lower() == ".onnx"
        report = inspect_onnx(source) if onnx_file else inspect_model(source, input, _split_names(output))
    except DetzooError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if onnx_file:
        _print_onnx(report)
        return
    src, io = report["source"], report["io"]
    typer.echo(f"format:        {src['format']}  ({src['path']}, {src['size'] / 1e6:.1f} MB, sha256 {src['sha256'][:16]}...)")
    if io:
        i = io["input"]
        typer.echo(f"input:         {i['name']} {i['dtype']} {i['shape']}")
        typer.echo(f"outputs:       {', '.join(f'{r}={n}' for r, n in io['outputs'].items())}")
        typer.echo(f"preprocessing: {io['preprocessing']}")
        typer.echo(f"class ids:     raw + {io['class_offset']}; classes: {io['num_classes'] or 'unknown'}")
    typer.echo(f"ops:           {report['op_count']} ({', '.join(f'{k} {v}' for k, v in list(report['op_census'].items())[:12])}, ...)")
    typer.echo(f"control flow:  {report['control_flow'] or 'none'}")
    typer.echo(f"tensor arrays: {report['tensor_arrays'] or 'none'}")
    typer.echo(f"NMS:           {report['nms_ops'] or 'none'}")
    typer.echo(f"family:        {report['family']['name']} ({report['family']['evidence']})")
    for r in report["refusals"]:
        typer.echo(f"refuses:       {r}")


def _print_onnx(report: dict) -> None:
    src = report["source"]
    typer.echo(f"format:        onnx opset {src['opset']}  ({src['path']}, {src['size'] / 1e6:.1f} MB, "
               f"sha256 {src['sha256'][:16]}...)")
    for i in report["inputs"]:
        typer.echo(f"input:         {i['name']} {i['dtype']} {i['shape']}")
    typer.echo(f"outputs:       {', '.join(o['name'] for o in report['outputs'])}")
    typer.echo(f"ops:           {report['op_count']} ({', '.join(f'{k} {v}' for k, v in list(report['op_census'].items())[:12])}, ...)")
    typer.echo(f"control flow:  {report['control_flow'] or 'none'}")
    typer.echo(f"NMS:           {report['nms_ops'] or 'none'}")
    q = report["int8"]
    if q is None:
        typer.echo("int8:          none (a float model)")
    elif q["saturation_safe"]:
        typer.echo(f"int8:          saturation-safe on every CPU: {q['gemm_weights_checked']} u8 x s8 GEMM weights, "
                   f"largest pair {q['largest_pair_sum']} <= {q['bound']}; {q.get('u8_gemm_weights', 0)} u8 x u8 "
                   f"GEMM (16-bit); {q['depthwise_weights']} depthwise (int32)")
    else:
        typer.echo(f"int8:          NOT saturation-safe: {q['unsafe_count']} of {q['gemm_weights_checked']} GEMM weights "
                   f"have a pair above {q['bound']} (largest {q['largest_pair_sum']}); exact only with VNNI or on ARM")
    for r in report["refusals"]:
        typer.echo(f"refuses:       {r}")


@app.command()
def convert(source: Path = typer.Argument(..., help="Frozen graph .pb, export folder, SavedModel, .tflite or .tar.gz"),
            out: Path = typer.Option(..., "--out", help="Output folder (the zoo entry)"),
            opset: int = O.OPSET.cli(help="ONNX opset (13-18)"),
            input: Optional[str] = typer.Option(None, "--input", help="Input tensor name (auto-detected)"),
            output: Optional[List[str]] = typer.Option(None, "--output",
                                                       help="Output names: num, boxes, scores, classes"),
            name: Optional[str] = typer.Option(None, help="Artifact name stem (default: from the source)"),
            force: bool = O.FORCE.cli(),
            check: bool = O.CHECK.cli(),
            check_images: Optional[Path] = typer.Option(None, help="Images for the parity check (default: demo frames)"),
            check_limit: Optional[int] = O.CHECK_LIMIT.cli(help="Use at most N parity images"),
            score_atol: Optional[float] = O.SCORE_ATOL.cli(),
            box_atol: Optional[float] = O.BOX_ATOL.cli(),
            parity_min_score: float = O.PARITY_MIN_SCORE.cli(),
            max_unmatched: int = O.MAX_UNMATCHED.cli(),
            parity_noise_factor: float = O.PARITY_NOISE_FACTOR.cli(),
            threads: int = O.THREADS.cli(),
            input_size: Optional[List[str]] = O.INPUT_SIZE.cli(),
            input_name: Optional[str] = typer.Option(None, "--input-name",
                                                     help="The artifact's input name (default: image_tensor:0, "
                                                          "or the SavedModel's input_tensor)"),
            keep_source_io: bool = typer.Option(False, "--keep-source-io",
                                                help="Keep the source's IO (size, float input, 0-based classes) "
                                                     "instead of the zoo contract"),
            allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.cli()):
    """Convert a TF detection model to ONNX (fp32) and check that its detections match the source."""
    from detzoo.convert import ConvertConfig, ParityTolerance, convert as run_convert

    try:
        cfg = ConvertConfig(source=source, out=out, opset=opset, input_name=input, output_names=_split_names(output),
                            name=name, force=force, check=check, check_images=check_images,
                            check_limit=check_limit, threads=threads, allow_unsafe_ops=allow_unsafe_ops,
                            input_sizes=input_size or [], artifact_input=input_name, keep_source_io=keep_source_io,
                            tolerance=ParityTolerance(score_atol=score_atol, box_atol=box_atol,
                                                      min_score=parity_min_score, max_unmatched=max_unmatched,
                                                      noise_factor=parity_noise_factor))
        res = run_convert(cfg)
    except DetzooError as e:
        _fail(e)
    typer.echo(f"wrote {res.artifact} ({res.artifact.stat().st_size / 1e6:.1f} MB) in {res.seconds:.1f}s")
    io = res.manifest.io
    typer.echo(f"input {io.input.name} {io.input.dtype} {io.input.shape}; outputs "
               f"{', '.join(io.output_names)}; classes raw + {io.class_offset}")
    if res.variant != "fp32":
        typer.echo(f"the source is an integer model: this is the entry's {res.variant} variant "
                   "(quantize does not quantize it again)")
    for vname, p in res.parities.items():
        typer.echo((f"{vname}: " if vname != res.variant else "") + p.summary())


@app.command()
def verify(folder: Path = typer.Argument(..., help="Output folder holding manifest.json"),
           images: Optional[Path] = O.IMAGES.cli(),
           annotations: Optional[Path] = O.ANNOTATIONS.cli(),
           limit: Optional[int] = O.LIMIT.cli(),
           threads: int = O.THREADS.cli(),
           latency_runs: int = O.LATENCY_RUNS.cli(),
           max_drop: float = O.MAX_DROP.cli(),
           bootstrap: int = O.BOOTSTRAP.cli(),
           variants: Optional[List[str]] = O.VARIANTS.cli(),
           reference_threshold: float = O.REFERENCE_THRESHOLD.cli(),
           shard: Optional[str] = typer.Option(None, "--shard", help="K/N: run only shard K of N (every N-th "
                                               "image) into DIR's cache; 'detzoo merge DIR' then reports"),
           ray: bool = typer.Option(False, "--ray", help="Run one Ray task per (model, shard), then report"),
           ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                                     help="With --ray: cluster address ('auto', 'ray://head:10001'; "
                                                          "default: start a local cluster)"),
           shards: Optional[int] = typer.Option(None, "--shards", help="With --ray: shards per model "
                                                "(default: cluster CPUs / --threads)"),
           batch: int = O.BATCH.cli(),
           feed_size: Optional[str] = O.FEED_SIZE.cli(),
           allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.cli(),
           quiet: bool = O.QUIET.cli()):
    """Measure every artifact against its source (COCO AP, agreement, latency); exit 1 if a drop exceeds --max-drop."""
    from rich.console import Console

    from detzoo.verify import VerifyConfig, verify as run_verify

    console = None if quiet else Console(stderr=True)
    with _user_errors(folder, quiet):
        cfg = VerifyConfig(folder=folder, images=images, annotations=annotations, limit=limit, threads=threads,
                           latency_runs=latency_runs, max_drop=max_drop, bootstrap=bootstrap,
                           variants=_split_names(variants), reference_threshold=reference_threshold,
                           allow_unsafe_ops=allow_unsafe_ops, batch=batch, feed_size=feed_size)
        if shard is not None and ray:
            raise DetzooError("--shard and --ray exclude each other: --shard runs one shard here, --ray runs all")
        if shards is not None and not ray:
            raise DetzooError("--shards is for --ray; run one shard with --shard K/N")
        if shard is not None:
            from detzoo.verify.shard import Shard, verify_shard

            sres = verify_shard(cfg, Shard.parse(shard), console)
            typer.echo(f"shard {sres.shard}: {sres.evaluated} of {sres.images} images through every model in "
                       f"{sres.seconds:.1f}s ({len(sres.skipped)} skipped); wrote {sres.record}. When all shards "
                       f"are done: detzoo merge {folder}")
            return
        if ray:
            from detzoo.verify.distributed import RayOptions, verify_ray

            res = verify_ray(cfg, RayOptions(address=ray_address, shards=shards), console)
        else:
            res = run_verify(cfg, console)
    if not quiet:
        typer.echo(_summary(folder))
        typer.echo(f"wrote {res.report_json} and {res.report_md}")


@app.command()
def merge(folder: Path = typer.Argument(..., help="Output folder whose shards ran ('detzoo verify DIR --shard K/N')"),
          images: Optional[Path] = typer.Option(None, "--images", help="Where this machine keeps the images "
                                                "(default: the path the shards recorded)"),
          annotations: Optional[Path] = typer.Option(None, "--annotations", help="Likewise for the annotations"),
          threads: Optional[int] = O.THREADS.cli(None, "Recorded, and used for latency (default: the shards')"),
          latency_runs: int = O.LATENCY_RUNS.cli(0, "Timed runs per model on this machine (0: none)"),
          max_drop: float = O.MAX_DROP.cli(),
          bootstrap: int = O.BOOTSTRAP.cli(),
          reference_threshold: float = O.REFERENCE_THRESHOLD.cli(),
          allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.cli(),
          quiet: bool = O.QUIET.cli()):
    """Combine all shards of DIR into one report, the one an unsharded verify writes; exit 1 as verify does."""
    from rich.console import Console

    from detzoo.verify.shard import merge as run_merge

    with _user_errors(folder, quiet):
        res = run_merge(folder, images=images, annotations=annotations, max_drop=max_drop, bootstrap=bootstrap,
                        reference_threshold=reference_threshold, latency_runs=latency_runs, threads=threads,
                        allow_unsafe_ops=allow_unsafe_ops, console=None if quiet else Console(stderr=True))
    if not quiet:
        typer.echo(_summary(folder))
        typer.echo(f"wrote {res.report_json} and {res.report_md}")


@app.command()
def build(source: Optional[Path] = typer.Argument(None, help="TF model (default: the embedded pedestrian SSDLite)"),
          out: Path = typer.Option(..., "--out", help="Output folder: the zoo entry"),
          images: Optional[Path] = O.IMAGES.cli(),
          annotations: Optional[Path] = O.ANNOTATIONS.cli(),
          calib_images: Optional[Path] = O.CALIB_IMAGES.cli(help="int8 calibration images (default: demo calib "
                                                                 "frames)"),
          precisions: str = O.PRECISIONS.cli(),
          max_drop: float = O.MAX_DROP.cli(),
          threads: int = O.THREADS.cli(),
          limit: Optional[int] = O.LIMIT.cli(),
          latency_runs: int = O.LATENCY_RUNS.cli(),
          bootstrap: int = O.BOOTSTRAP.cli(),
          force: bool = O.FORCE.cli(),
          input_size: Optional[List[str]] = O.INPUT_SIZE.cli(),
          feed_size: Optional[str] = O.FEED_SIZE.cli(),
          batch: int = O.BATCH.cli(),
          allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.cli(),
          quiet: bool = O.QUIET.cli()):
    """Convert, quantize and verify in one run; write the zoo entry (report.html, README.md model card)."""
    from rich.console import Console

    from detzoo.build import BuildConfig, build as run_build

    console = None if quiet else Console(stderr=True)
    with _user_errors(out, quiet):
        cfg = BuildConfig(out=out, source=source, calib_images=calib_images, precisions=precisions.split(","),
                          force=force, input_sizes=input_size or [], images=images, annotations=annotations,
                          limit=limit, threads=threads, latency_runs=latency_runs, max_drop=max_drop,
                          bootstrap=bootstrap, allow_unsafe_ops=allow_unsafe_ops, feed_size=feed_size, batch=batch)
        res = run_build(cfg, console)
    if not quiet:
        typer.echo(_summary(out))
        typer.echo(f"built {out} in {res.seconds['total']:.0f}s: manifest.json, "
                   f"{', '.join(sorted(p.name for p in out.glob('*.onnx')))}, report.json, REPORT.md, report.html, "
                   "README.md")


@app.command()
def reverify(folder: Path = typer.Argument(..., help="A zoo entry made by 'detzoo build' or 'detzoo verify'"),
             tolerance: float = O.DRIFT_TOLERANCE.cli(),
             allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.cli(),
             quiet: bool = O.QUIET.cli()):
    """Replay a zoo entry: check every sha256, re-run verification, exit 1 on drift."""
    from rich.console import Console

    from detzoo.verify.reverify import reverify as run_reverify

    try:
        O.DRIFT_TOLERANCE.check(tolerance)
    except DetzooError as e:
        _fail(e)
    try:
        res = run_reverify(folder, tolerance, None if quiet else Console(stderr=True), allow_unsafe_ops)
    except DetzooError as e:
        _fail(e)
    for line in res.lines():
        typer.echo(line)
    if not res.passed:
        typer.echo(f"detzoo: error: {folder} drifted ({len(res.integrity)} integrity, {len(res.drift)} metric "
                   "problems)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{folder}: no drift on {res.images} images")


@app.command()
def add(folder: Path = typer.Argument(..., help="A zoo entry holding manifest.json"),
        model: Path = typer.Argument(..., help="The model to bring in: an .onnx or a .tflite made elsewhere"),
        variant: str = typer.Option(..., "--variant", help="Its variant name in the entry, e.g. tflite-int8"),
        precision: Optional[str] = typer.Option(None, "--precision",
                                                help="fp32, fp16 or int8 (default: guessed from the model)"),
        force: bool = O.FORCE.cli(help="Replace a variant of that name"),
        allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.cli(help="Accept models with unsafe ops")):
    """Bring an ONNX or TFLite model into FOLDER as a variant (checked and run once); 'detzoo verify' then measures it."""
    from detzoo.add import add as run_add

    try:
        res = run_add(folder, model, variant, force=force, allow_unsafe_ops=allow_unsafe_ops, precision=precision)
    except DetzooError as e:
        _fail(e)
    v = res.variant
    contract = ("keeps the zoo contract" if v.settings["contract"]
                else f"outside the zoo contract ({v.settings['contract_reason']})")
    typer.echo(f"{'replaced' if res.replaced else 'added'} variant {v.name}: {res.path} ({v.format}, {v.precision}, "
               f"sha256 {v.sha256[:12]}...), {contract}")


@app.command()
def quantize(folder: Path = typer.Argument(..., help="Output folder holding manifest.json and the fp32 artifact"),
             fp16: bool = O.FP16.cli(),
             int8: bool = O.INT8.cli(),
             calib_images: Optional[Path] = O.CALIB_IMAGES.cli(),
             calib_count: Optional[int] = O.CALIB_COUNT.cli(),
             calib_method: str = O.CALIB_METHOD.cli(),
             per_channel: bool = O.PER_CHANNEL.cli(),
             int8_target: str = O.INT8_TARGET.cli(),
             reduce_range: Optional[bool] = O.REDUCE_RANGE.cli(),
             bias_correction: bool = O.BIAS_CORRECTION.cli(),
             adaround: bool = O.ADAROUND.cli(),
             cle: bool = O.CLE.cli(),
             max_drop: Optional[float] = O.SEARCH_MAX_DROP.cli(),
             check_images: Optional[Path] = O.CHECK_IMAGES.cli(),
             check_limit: Optional[int] = O.CHECK_LIMIT.cli(),
             threads: int = O.THREADS.cli(help="Intra-op threads for onnxruntime"),
             fp32_batch1: bool = O.FP32_BATCH1.cli(),
             feed_size: Optional[str] = O.FEED_SIZE.cli(help="Calibrate and check on images resized to HxW first, as "
                                                             "verify --feed-size (the zoo's runner) feeds them"),
             force: bool = O.FORCE.cli(help="Replace existing fp16/int8 artifacts"),
             allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.cli(),
             quiet: bool = O.QUIET.cli()):
    """Add fp16 and int8 variants of the fp32 artifact to FOLDER and record them in its manifest."""
    from detzoo.quantize import QuantizeConfig, quantize as run_quantize

    try:
        cfg = QuantizeConfig(folder=folder, fp16=fp16, int8=int8, calib_images=calib_images, calib_count=calib_count,
                             calib_method=calib_method, per_channel=per_channel, int8_target=int8_target,
                             reduce_range=reduce_range, bias_correction=bias_correction, adaround=adaround, cle=cle,
                             max_drop=max_drop, check_images=check_images, check_limit=check_limit, threads=threads,
                             force=force, fp32_batch1=fp32_batch1, allow_unsafe_ops=allow_unsafe_ops,
                             feed_size=feed_size)
        res = run_quantize(cfg, progress=None if quiet else (lambda msg: typer.echo(f"  {msg}")))
    except DetzooError as e:
        _fail(e)
    for note in res.warnings:
        typer.echo(f"detzoo: warning: {note}", err=True)
    for name, path in res.artifacts.items():
        f = res.fidelity[name]
        ap = "n/a" if f["fidelity_ap"] is None else f"{f['fidelity_ap']:.4f}"
        ap50 = "n/a" if f["fidelity_ap50"] is None else f"{f['fidelity_ap50']:.4f}"
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): fidelity AP {ap}, AP50 {ap50} "
                   f"on {f['images']} check images")
    typer.echo(f"precision plan ({res.seconds:.1f}s):")
    for region, entry in res.plan.to_json()["regions"].items():
        typer.echo(f"  {region:17s} {entry['nodes']:4d} nodes  {entry['precision'].split(' ')[0]:8s} {entry['why']}")
    if res.plan.excluded:
        typer.echo(f"  int8 keeps {len(res.plan.excluded)} network nodes float (reasons in manifest.json)")
    for line in res.int8_lines():
        typer.echo(line)


# Start-up lines of TensorFlow's and onnxruntime's C++ sides, which ignore TF_CPP_MIN_LOG_LEVEL in
# part: absl-style ("W0000 00:00:...  file.cc:12] ..."), TF's own ("2026-01-01 00:00:00.0: I tensorflow/..."),
# onnxruntime's ("[W:onnxruntime:...]"), and the few that come without a prefix.
_NATIVE_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    rb"|.*\[[IWE]:onnxruntime:"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .*rebuild TensorFlow"
    rb"|.*Could not find cuda drivers on your machine"
    rb"|.*oneDNN custom operations are on)")


def _filter_native_stderr() -> None:
    """Route file descriptor 2 (C++ logs) through a filter that drops TensorFlow's start-up noise.

    Python's own stderr (errors, progress bars) keeps a direct copy of the terminal."""
    import atexit
    import threading

    saved = os.dup(2)
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def pump():
        with os.fdopen(r, "rb") as f:
            for line in f:
                if not _NATIVE_NOISE.match(line):
                    os.write(saved, line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()

    def drain():
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF and flushes
        t.join(timeout=1.0)

    atexit.register(drain)


def _internal_error(e: BaseException) -> int:
    """detzoo's own failure: one line, the traceback in a log file whose path is printed, exit 3."""
    import tempfile
    import time
    import traceback

    from detzoo.errors import first_line

    log_dir = Path(os.environ.get("DETZOO_LOG_DIR") or tempfile.gettempdir())
    log = log_dir / f"detzoo-internal-error-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log.write_text(f"detzoo {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(e)))
        where = f"traceback in {log}"
    except OSError as err:
        where = f"no log written ({first_line(err)})"
    typer.echo(f"detzoo: internal error (please report): {type(e).__name__}: {first_line(e)}; {where}", err=True)
    return 3


def main() -> None:
    """Console entry point. ``--verbose`` anywhere on the line lets TensorFlow's and onnxruntime's
    start-up logs through; exit 3 is detzoo's own failure (see ``_internal_error``)."""
    if os.environ.get("PYTHONHASHSEED") != "0" and Path(sys.argv[0]).is_file():
        # tf2onnx's output depends on the order Python iterates over sets of names, which string
        # hashing randomizes per process: pin it (seen: seeds 0 and 1 gave different bytes, each
        # the same bytes on every run). tf2onnx still differed once in five pinned runs.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    verbose = "--verbose" in sys.argv[1:]
    if verbose:
        sys.argv.remove("--verbose")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if len(sys.argv) > 1 and sys.argv[1] not in ("--help", "-h"):
            _filter_native_stderr()
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("detzoo: interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - everything that is not the user's: exit 3, traceback logged
        sys.exit(_internal_error(e))


if __name__ == "__main__":
    main()
