"""Fetches the demo's fraud_v1 feature vector from a running feature-gateway and prints one line
per feature: name, value, status.

    cargo run --release -p feature-gateway -- demo          # in another terminal
    clients/python/.venv/bin/python clients/python/example.py --addr 127.0.0.1:50051 --user u_00042
"""

import argparse
import sys

import grpc

from featuregateway.v1 import feature_service_pb2 as fs
from featuregateway.v1 import feature_service_pb2_grpc as fs_grpc


def fmt(value: fs.Value) -> str:
    """Renders a Value's oneof for humans; an unset kind means null (see the feature's status)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return "null"
    if kind == "string_value":
        return repr(value.string_value)
    if kind == "timestamp_value":
        return value.timestamp_value.ToJsonString()
    if kind.endswith("_list_value"):
        return str(list(getattr(value, kind).values))
    return str(getattr(value, kind))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="gateway gRPC address host:port")
    parser.add_argument("--user", default="u_00042", help="user_id entity key")
    parser.add_argument("--card", default="c_00042", help="card_id entity key")
    parser.add_argument("--merchant", default="m_0042", help="merchant_id entity key")
    # The deadline travels to the gateway as grpc-timeout: it is how the gateway learns this
    # caller's budget and answers inside it (late features come back TIMED_OUT, not an error).
    parser.add_argument("--timeout", type=float, default=0.2, help="deadline of the call, seconds")
    args = parser.parse_args(argv)

    # One channel per process, shared by every call: gRPC multiplexes calls over it.
    with grpc.insecure_channel(args.addr) as channel:
        # Connect before the first deadline-bound call, so that it does not spend its budget on
        # the TCP and HTTP/2 handshakes; a prediction service does this once at start-up.
        grpc.channel_ready_future(channel).result(timeout=5)
        stub = fs_grpc.FeatureServiceStub(channel)
        request = fs.GetFeaturesRequest(
            feature_service="fraud_v1",
            entities={
                "user_id": fs.Value(string_value=args.user),
                "card_id": fs.Value(string_value=args.card),
                "merchant_id": fs.Value(string_value=args.merchant),
            },
            context={
                "amount": fs.Value(double_value=129.99),
                "currency": fs.Value(string_value="USD"),
                "channel": fs.Value(string_value="ecom"),
            },
        )
        try:
            response = stub.GetFeatures(request, timeout=args.timeout)
        except grpc.RpcError as e:
            # A bad request is the only error; its details name the offending field.
            print(f"GetFeatures: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print("request_id", response.request_id)
    for name, value, status in zip(response.feature_names, response.values, response.statuses):
        status_name = fs.FeatureStatus.Name(status).removeprefix("FEATURE_STATUS_")
        print(f"{name:<36} {fmt(value):<24} {status_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
