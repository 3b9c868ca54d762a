"""``verify --ray`` on a local Ray cluster (2 CPUs, no dashboard, localhost only): one task per
(model, shard), and the report equals an unsharded verify's."""

import os
import shutil

import pytest

from detzoo.verify import VerifyConfig, verify
from tests.clihelp import run_cli
from tests.verify.conftest import add_shifted_variant
from tests.verify.test_shard import comparable

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_equals_unsharded(local_ray, shapes_entry_dir, shapes, shifted_annotations, tmp_path):
    from detzoo.verify.distributed import RayOptions, verify_ray

    entries = []
    for name in ("whole", "ray"):
        shutil.copytree(shapes_entry_dir, tmp_path / name)
        add_shifted_variant(tmp_path / name)
        entries.append(tmp_path / name)
    kw = dict(images=shapes[0], annotations=shifted_annotations, latency_runs=0, max_drop=100.0)
    want = verify(VerifyConfig(folder=entries[0], **kw)).report.to_json()
    got = verify_ray(VerifyConfig(folder=entries[1], **kw), RayOptions(shards=3)).report.to_json()
    assert comparable(got) == comparable(want)
    assert all(m["inferences"] == 0 for m in got["models"].values())  # every detection came from the tasks
    # 3 models x 3 shards: one cache file, written by the driver only
    assert len(list((entries[1] / ".detzoo-cache" / "detections").glob("*.jsonl"))) == 3


def test_cli_ray_resumes_from_cache(local_ray, shapes_entry, shapes):
    r = run_cli("verify", shapes_entry, "--images", shapes[0], "--ray", "--shards", "2", "--latency-runs", "0",
                "--quiet")
    assert r.exit_code == 0, r.output
    lines = {p.name: p.read_text() for p in (shapes_entry / ".detzoo-cache" / "detections").glob("*.jsonl")}
    r = run_cli("verify", shapes_entry, "--images", shapes[0], "--ray", "--latency-runs", "0", "--quiet")
    assert r.exit_code == 0, r.output
    assert {p.name: p.read_text() for p in (shapes_entry / ".detzoo-cache" / "detections").glob("*.jsonl")} == lines


def test_changed_artifact_refused_before_any_task(local_ray, shapes_entry, shapes):
    from tests.clihelp import assert_user_error

    v = next(shapes_entry.glob("*.onnx"))
    v.write_bytes(v.read_bytes()[:-10])  # the artifact no longer matches its sha256
    assert_user_error(run_cli("verify", shapes_entry, "--images", shapes[0], "--ray"), 2, "changed")
    assert not (shapes_entry / ".detzoo-cache").exists()


from tests.test_untrusted_entry import _copy, _swap_source, frozen_entry  # noqa: E402,F401 (a fixture)


def test_ray_workers_refuse_a_swapped_source(local_ray, frozen_entry, tmp_path, shapes):  # noqa: F811
    """The workers load the source themselves: they scan it, and the refusal reaches the user as exit 2."""
    from tests.clihelp import assert_user_error, snapshot

    entry = _copy(frozen_entry, tmp_path)
    target = _swap_source(entry, tmp_path)
    before = snapshot(entry)
    r = run_cli("verify", entry, "--images", shapes[0], "--annotations", shapes[1], "--ray", "--shards", "2",
                "--latency-runs", "0", "--quiet")
    assert_user_error(r, 2, "ray task source shard", "WriteFile", "--allow-unsafe-ops")
    assert not target.exists()
    assert {k: v for k, v in snapshot(entry).items() if ".detzoo-cache" not in k} == \
        {k: v for k, v in before.items() if ".detzoo-cache" not in k}
