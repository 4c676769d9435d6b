"""Reads the training log and a training set with pyarrow, as a user would, and prints what it
found as one JSON line: the Rust end-to-end test (tests/tests/training_log.rs) compares it with
what the gateway served.

usage: read_with_pyarrow.py LOG_DIR TRAINING_SET.parquet
"""
import json
import sys

import pyarrow.dataset as ds
import pyarrow.parquet as pq


def main() -> None:
    log_dir, training_set = sys.argv[1], sys.argv[2]
    # The log directory as a hive-partitioned dataset: feature_service and date come back as
    # columns from the directory names; hidden temporary files are skipped.
    log = ds.dataset(log_dir, format="parquet", partitioning="hive").to_table()
    ids = log.column("request_id").to_pylist()
    assert len(ids) == len(set(ids)), "a request id is logged twice"
    services = sorted(set(log.column("feature_service").to_pylist()))
    table = pq.read_table(training_set)
    score = "feature:merchant_profile:risk_score"
    print(
        json.dumps(
            {
                "log_rows": log.num_rows,
                "feature_services": services,
                "served_at_type": str(log.schema.field("served_at").type),
                "training_set_rows": table.num_rows,
                "training_set_ids": table.column("request_id").to_pylist(),
                # Doubles as their exact repr, so the comparison is bit for bit.
                "risk_scores": [None if v is None else v.hex() for v in table.column(score).to_pylist()],
                "labels": table.column("is_fraud").to_pylist(),
            }
        )
    )


if __name__ == "__main__":
    main()
