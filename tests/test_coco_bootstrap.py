"""detzoo.coco.bootstrap: the paired bootstrap of an mAP drop."""

from detzoo.coco.bootstrap import bootstrap_drop
from detzoo.coco.evaluation import evaluate
from tests.cocohelp import oracle_results, shapes  # noqa: F401 (a fixture)


def test_bootstrap_drop_is_paired(shapes):
    _, _, gt = shapes
    a = evaluate(gt, oracle_results(gt))
    same = bootstrap_drop(a, evaluate(gt, oracle_results(gt)), 50)
    assert same["low"] == same["high"] == 0.0  # identical models: every resample drops 0
    worse = evaluate(gt, oracle_results(gt, 4.0, 3))
    ci = bootstrap_drop(a, worse, 200, seed=1)
    drop = a.stats[0] - worse.stats[0]
    assert 0 < ci["low"] <= drop <= ci["high"] < 1
    assert ci == bootstrap_drop(a, worse, 200, seed=1)  # deterministic
