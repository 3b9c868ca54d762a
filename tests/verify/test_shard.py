"""Sharded verification: shards partition the images, and merged shards report what one run reports."""

import json
import shutil

import pytest

from detzoo.errors import DetzooError
from detzoo.verify import VerifyConfig, verify
from detzoo.verify.shard import Shard, merge, verify_shard
from tests.clihelp import assert_user_error, run_cli, snapshot
from tests.verify.conftest import add_shifted_variant

# What may differ between a merged report and an unsharded one: when and how fast it ran, the
# latency (merge measures none by default), the cache counters (a merge reads every detection
# from the cache) and the manifest's sha256 as read (each run records its results in it).
VOLATILE = {"created", "seconds", "latency"}
VOLATILE_MODEL = {"latency", "speedup", "inferences", "cache_hits"}


def comparable(report: dict) -> dict:
    """``report`` without the fields listed above; everything else must be equal, float for float."""
    r = {k: v for k, v in report.items() if k not in VOLATILE}
    r["models"] = {n: {k: v for k, v in m.items() if k not in VOLATILE_MODEL} for n, m in report["models"].items()}
    r["manifest"] = {k: v for k, v in report["manifest"].items() if k != "sha256_as_read"}
    return r


def _twins(entry_dir, tmp_path):
    """Two identical copies of the entry with a second, worse variant: one run whole, one in shards."""
    out = []
    for name in ("whole", "sharded"):
        d = tmp_path / name
        shutil.copytree(entry_dir, d)
        add_shifted_variant(d)
        out.append(d)
    return out


def test_parse_and_partition():
    assert Shard.parse("2/4") == Shard(2, 4) and str(Shard.parse(" 3 / 5 ")) == "3/5"
    for bad in ("0/3", "4/3", "a/b", "2", "-1/2", "1/0", ""):
        with pytest.raises(DetzooError, match="--shard"):
            Shard.parse(bad)
    items = list(range(23))
    parts = [Shard(k, 4).select(items) for k in range(1, 5)]
    assert sorted(x for p in parts for x in p) == items  # a partition: every item once
    assert [len(p) for p in parts] == [6, 6, 6, 5]  # balanced
    assert Shard(3, 4).select(items) == Shard(3, 4).select(items)  # deterministic


@pytest.mark.parametrize("n", [1, 3])
def test_sharded_merged_equals_unsharded_ground_truth(shapes_entry_dir, shapes, shifted_annotations, tmp_path, n):
    whole, sharded = _twins(shapes_entry_dir, tmp_path)
    kw = dict(images=shapes[0], annotations=shifted_annotations, latency_runs=0, max_drop=100.0, bootstrap=20)
    want = verify(VerifyConfig(folder=whole, **kw)).report.to_json()

    ran = 0
    for k in ((3, 1, 2) if n == 3 else (1,)):  # in any order
        res = verify_shard(VerifyConfig(folder=sharded, **kw), Shard(k, n))
        ran += res.images
        assert res.inferences == {m: res.evaluated for m in ("source", "fp32", "shifted")}
    assert ran == want["data"]["evaluated"]
    assert not (sharded / "report.json").exists()  # a shard writes no report

    got = merge(sharded, max_drop=100.0, bootstrap=20).report.to_json()
    assert all(m["inferences"] == 0 for m in got["models"].values())  # nothing recomputed
    assert comparable(got) == comparable(want)
    assert got["models"]["shifted"]["drop"]["AP"] > 0.05  # a real, non-trivial comparison
    assert json.loads((sharded / "report.json").read_text()) == got


def test_reference_mode_with_a_broken_image(shapes_entry_dir, shapes, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(shapes[0], images)
    (images / "0_broken.png").write_bytes(b"not a png")
    whole, sharded = _twins(shapes_entry_dir, tmp_path)
    want = verify(VerifyConfig(folder=whole, images=images, latency_runs=0, max_drop=100.0)).report.to_json()
    assert want["data"]["skipped"]
    for k in (1, 2):
        verify_shard(VerifyConfig(folder=sharded, images=images), Shard(k, 2))
    got = merge(sharded, max_drop=100.0).report.to_json()
    assert comparable(got) == comparable(want)


def test_cli_shard_then_merge(shapes_entry, shapes, tmp_path):
    for k in (1, 2):
        r = run_cli("verify", shapes_entry, "--images", shapes[0], "--shard", f"{k}/2", "--quiet")
        assert r.exit_code == 0, r.output
        assert f"shard {k}/2" in r.stdout
    r = run_cli("merge", shapes_entry, "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((shapes_entry / "report.json").read_text())["data"]["evaluated"] == 24


def test_merge_refuses_missing_and_mismatched_shards(shapes_entry, shapes, tmp_path):
    assert_user_error(run_cli("merge", shapes_entry), 2, "no shards", "--shard")
    verify_shard(VerifyConfig(folder=shapes_entry, images=shapes[0], limit=10), Shard(1, 3))
    assert_user_error(run_cli("merge", shapes_entry), 2, "incomplete", "2/3", "3/3")
    verify_shard(VerifyConfig(folder=shapes_entry, images=shapes[0], limit=12), Shard(2, 3))
    verify_shard(VerifyConfig(folder=shapes_entry, images=shapes[0], limit=12), Shard(3, 3))
    assert_user_error(run_cli("merge", shapes_entry), 2, "shard 2/3", "shard 1/3", "same options")
    assert not (shapes_entry / "report.json").exists()
    # complete and consistent, but a model changed since the shards ran
    verify_shard(VerifyConfig(folder=shapes_entry, images=shapes[0], limit=12), Shard(1, 3))
    m = json.loads((shapes_entry / "manifest.json").read_text())
    m["variants"]["fp32"]["sha256"] = "0" * 64
    (shapes_entry / "manifest.json").write_text(json.dumps(m))
    assert_user_error(run_cli("merge", shapes_entry), 2, "models changed", "re-run")
    assert not (shapes_entry / "report.json").exists() and not (shapes_entry / "REPORT.md").exists()


def test_bad_shard_options(shapes_entry, shapes):
    before = snapshot(shapes_entry)
    assert_user_error(run_cli("verify", shapes_entry, "--shard", "5/4"), 2, "--shard", "5/4")
    assert_user_error(run_cli("verify", shapes_entry, "--shard", "x"), 2, "--shard", "K/N")
    assert_user_error(run_cli("verify", shapes_entry, "--shard", "1/2", "--ray"), 2, "--shard", "--ray")
    assert_user_error(run_cli("verify", shapes_entry, "--shards", "2"), 2, "--shards", "--ray")
    assert snapshot(shapes_entry) == before
