"""Where a run trains (train/placement.py): by its estimated cost against the cluster's shape."""

from __future__ import annotations

from ray_pipeline.config import TrainingConfig
from ray_pipeline.train.placement import ClusterShape, place

ONE_NODE = ClusterShape(nodes=1, cpus_per_node=2, driver_cpus=2)
FOUR_NODES = ClusterShape(nodes=4, cpus_per_node=16, driver_cpus=16)


def test_one_node_trains_in_process_with_all_its_threads_whatever_the_size():
    training = TrainingConfig(workers=2)
    for rows in (1_000, 10_000_000):
        p = place(training, "xgboost", "hist", rows, 50, 200, ONE_NODE)
        assert (p.workers, p.threads) == (0, 2), p
        assert "one node adds no CPUs" in p.why


def test_more_nodes_take_a_run_whose_loop_outweighs_ray_trains_start():
    training = TrainingConfig(workers=4)
    small = place(training, "xgboost", "hist", 50_000, 20, 200, FOUR_NODES)
    assert small.workers == 0 and "Ray Train's start" in small.why, small
    large = place(training, "xgboost", "hist", 10_000_000, 50, 500, FOUR_NODES)
    assert large.workers == 4 and "on 4 nodes" in large.why, large
    assert large.lineage()["estimate_s"] > 0
    # the linear model's passes are cheaper: the same rows stay in-process until they are many more
    linear = place(training, "logreg", "gd", 1_000_000, 20, 300, FOUR_NODES)
    assert linear.workers == 0, linear


def test_a_driver_without_cpus_uses_one_worker_with_a_nodes_threads_or_spreads():
    head = ClusterShape(nodes=3, cpus_per_node=8, driver_cpus=0)
    small = place(TrainingConfig(workers=3), "logreg", "newton", 10_000, 10, 10, head)
    assert (small.workers, small.cpus_per_worker, small.threads) == (1, 8.0, 8), small
    large = place(TrainingConfig(workers=3), "xgboost", "hist", 20_000_000, 40, 500, head)
    assert large.workers == 3, large


def test_what_the_user_says_wins():
    training = TrainingConfig(workers=2)
    assert place(training, "xgboost", "hist", 10, 5, 10, FOUR_NODES, workers=2).workers == 2
    assert place(TrainingConfig(workers=2, placement="workers"), "xgboost", "hist", 10, 5, 10, ONE_NODE).workers == 2
    big = 10_000_000
    assert place(TrainingConfig(workers=2, placement="in_process"), "xgboost", "hist", big, 50, 500, FOUR_NODES).workers == 0
    fixed = TrainingConfig(workers=2, in_process_max_rows=100)
    assert place(fixed, "logreg", "gd", 101, 5, 10, ONE_NODE).workers == 2
    assert place(fixed, "logreg", "gd", 100, 5, 10, ONE_NODE).workers == 0
