"""Training across nodes of a real multi-node Ray cluster (ray.cluster_utils.Cluster, own process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def test_training_workers_on_different_nodes_match_one_node(tmp_path):
    script = Path(__file__).with_name("multinode_train.py")
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_PIPELINE_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=900
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT ") :])
    spread, packed = out["spread"], out["packed"]
    assert len(out["cluster_nodes"]) == 3
    assert len(set(spread["nodes"])) == 2, "STRICT_SPREAD workers should sit on two different nodes"
    assert len(set(packed["nodes"])) == 1
    np.testing.assert_allclose(spread["weights"], packed["weights"], atol=1e-6, rtol=0)
    assert abs(spread["bias"] - packed["bias"]) < 1e-6
