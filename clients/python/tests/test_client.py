"""Tests of the generated Python client against a live gateway running the embedded demo
(`feature-gateway demo`), whose gRPC address clients/test.sh passes in FEATURE_GATEWAY_ADDR."""

import os

import grpc
import pytest

import example
from featuregateway.v1 import feature_service_pb2 as fs
from featuregateway.v1 import feature_service_pb2_grpc as fs_grpc

# The demo's fraud_v1 vector, in its declared output order.
FRAUD_V1 = [
    "txn:amount", "txn:currency", "txn:channel",
    "user_profile:account_age_days", "user_profile:country", "user_profile:kyc_level",
    "user_profile:email_verified", "user_profile:avg_txn_amount_30d", "user_profile:txn_count_7d",
    "user_profile:chargebacks_365d",
    "card_profile:card_age_days", "card_profile:card_type", "card_profile:issuer_country",
    "card_profile:decline_rate_30d",
    "merchant_profile:mcc", "merchant_profile:country", "merchant_profile:risk_score",
    "merchant_profile:chargeback_rate_90d",
    "mcc_risk:fraud_rate", "mcc_risk:risk_tier",
]  # fmt: skip

# The deadline of each call, in seconds. Generous because the test machine is small and shared,
# and the first call also pays for the connection; the tests check behaviour, never speed.
DEADLINE = 5.0

PRESENT = fs.FEATURE_STATUS_PRESENT
NOT_FOUND = fs.FEATURE_STATUS_NOT_FOUND


@pytest.fixture(scope="module")
def stub():
    addr = os.environ.get("FEATURE_GATEWAY_ADDR")
    if not addr:
        pytest.skip("FEATURE_GATEWAY_ADDR is not set; clients/test.sh starts a gateway and sets it")
    with grpc.insecure_channel(addr) as channel:
        yield fs_grpc.FeatureServiceStub(channel)


def s(v: str) -> fs.Value:
    return fs.Value(string_value=v)


def entities(user: str, card: str, merchant: str) -> dict:
    return {"user_id": s(user), "card_id": s(card), "merchant_id": s(merchant)}


def txn_context(amount: float) -> dict:
    return {"amount": fs.Value(double_value=amount), "currency": s("USD"), "channel": s("ecom")}


def expected(feature: str, unknown_user: bool) -> int:
    """The status of each feature when only the user is unknown (or nothing is)."""
    return NOT_FOUND if unknown_user and feature.startswith("user_profile:") else PRESENT


def names(statuses) -> list:
    return [fs.FeatureStatus.Name(st) for st in statuses]


def test_demo_keys_all_present(stub):
    r = stub.GetFeatures(
        fs.GetFeaturesRequest(
            feature_service="fraud_v1",
            entities=entities("u_00042", "c_00042", "m_0042"),
            context=txn_context(129.99),
            request_id="python-client-test-1",
        ),
        timeout=DEADLINE,
    )
    assert r.request_id == "python-client-test-1"
    assert list(r.feature_names) == FRAUD_V1
    assert len(r.values) == 20
    assert names(r.statuses) == ["FEATURE_STATUS_PRESENT"] * 20
    # The request-context features echo what was sent, with their declared types.
    assert r.values[0].double_value == 129.99
    assert r.values[1].string_value == "USD"
    # Table features carry a typed value of their declared kind.
    assert r.values[3].WhichOneof("kind") == "int64_value"
    assert r.values[6].WhichOneof("kind") == "bool_value"


def test_unknown_user_is_not_found(stub):
    r = stub.GetFeatures(
        fs.GetFeaturesRequest(
            feature_service="fraud_v1",
            entities=entities("u_unknown", "c_00042", "m_0042"),
            context=txn_context(5),
        ),
        timeout=DEADLINE,
    )
    assert list(r.feature_names) == FRAUD_V1
    assert names(r.statuses) == names(expected(f, True) for f in FRAUD_V1)


def test_missing_card_is_invalid_argument(stub):
    ents = entities("u_00042", "c_00042", "m_0042")
    del ents["card_id"]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetFeatures(
            fs.GetFeaturesRequest(feature_service="fraud_v1", entities=ents, context=txn_context(5)),
            timeout=DEADLINE,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "entities.card_id" in err.value.details()


def test_batch_of_three_rows_in_order(stub):
    keys = [("u_00001", "c_00001", "m_0001"), ("u_unknown", "c_00002", "m_0002"),
            ("u_00042", "c_00042", "m_0042")]  # fmt: skip
    r = stub.GetFeaturesBatch(
        fs.GetFeaturesBatchRequest(
            feature_service="fraud_v1",
            rows=[
                fs.EntityRow(entities=entities(*k), context=txn_context(i + 1.5))
                for i, k in enumerate(keys)
            ],
        ),
        timeout=DEADLINE,
    )
    assert list(r.feature_names) == FRAUD_V1
    assert len(r.rows) == 3
    for i, row in enumerate(r.rows):
        assert len(row.values) == 20
        # Each row's txn:amount is its own request context: the rows come back in order.
        assert row.values[0].double_value == i + 1.5
        # Row 1's user is unknown: its user_profile features alone are NOT_FOUND.
        assert names(row.statuses) == names(expected(f, i == 1) for f in FRAUD_V1), f"row {i}"


def test_describe_feature_service(stub):
    r = stub.DescribeFeatureService(fs.DescribeFeatureServiceRequest(name="fraud_v1"), timeout=DEADLINE)
    assert [f.name for f in r.features] == FRAUD_V1
    assert r.deadline_ms == 30


def test_example_prints_the_demo_vector(stub, capsys):
    # A deadline well above the example's default: the test machine is shared and busy.
    addr = os.environ["FEATURE_GATEWAY_ADDR"]
    assert example.main(["--addr", addr, "--user", "u_00042", "--timeout", str(DEADLINE)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 21 and lines[0].startswith("request_id "), lines
    assert lines[1].startswith("txn:amount ") and "129.99" in lines[1]
    assert all(line.endswith(" PRESENT") for line in lines[1:]), lines
