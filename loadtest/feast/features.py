"""The feature definitions `bench.py feast` applies: one entity, one feature view holding the
8 features of `bench.py redis`'s `user_stats` view (one view, so one Redis read per request, as
Feast's performance-tuning guide advises), and the feature service the load asks for."""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

user = Entity(name="user_id", join_keys=["user_id"], value_type=ValueType.STRING)

users_source = FileSource(
    name="users",
    path=os.path.join(os.environ["FEAST_BENCH_DIR"], "users.parquet"),
    timestamp_field="event_timestamp",
)

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days=30),
    schema=[
        Field(name="txn_count_1h", dtype=Int64),
        Field(name="txn_count_24h", dtype=Int64),
        Field(name="txn_amount_24h", dtype=Float64),
        Field(name="avg_amount_30d", dtype=Float64),
        Field(name="distinct_merchants_7d", dtype=Int64),
        Field(name="failed_logins_24h", dtype=Int64),
        Field(name="last_country", dtype=String),
        Field(name="risk_score", dtype=Float64),
    ],
    online=True,
    source=users_source,
)

user_stats_v1 = FeatureService(name="user_stats_v1", features=[user_stats])
