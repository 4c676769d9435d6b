"""Loads `bench.py feast`'s users into Feast's online store with Feast's own API, run by the
benchmark's Feast virtualenv from a copy of this folder:

    python load_users.py USERS_CSV

USERS_CSV is the file `bench.py`'s write_users() makes for `bench.py redis` (same seed, same
rows). It becomes the file source's Parquet file, `FeatureStore.apply` registers the definitions
in features.py and `FeatureStore.materialize` writes every row into Redis. Prints one JSON line:
the rows loaded and the seconds each step took."""

import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
from feast import FeatureStore

import features


def main():
    csv = Path(sys.argv[1])
    started = time.time()
    frame = pd.read_csv(csv, dtype={"user_id": str, "last_country": str})
    loaded_at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    frame["event_timestamp"] = pd.Timestamp(loaded_at)
    frame.to_parquet(features.users_source.path, index=False)
    parquet_s = time.time() - started

    store = FeatureStore(repo_path=str(Path(__file__).resolve().parent))
    started = time.time()
    store.apply([features.user, features.user_stats, features.user_stats_v1])
    apply_s = time.time() - started

    started = time.time()
    store.materialize(start_date=loaded_at - timedelta(days=1),
                      end_date=loaded_at + timedelta(minutes=30))
    materialize_s = time.time() - started
    print(json.dumps({"rows": len(frame), "parquet_s": parquet_s, "apply_s": apply_s,
                      "materialize_s": materialize_s}))


if __name__ == "__main__":
    main()
