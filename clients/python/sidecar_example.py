"""An example sidecar fetcher: serves the view `accounts` from a small in-memory table over the
gateway's sidecar contract (service featuregateway.v1.Fetcher of fetcher.proto; the whole
contract is in docs/sidecars.md).

    clients/python/.venv/bin/python clients/python/sidecar_example.py --listen 127.0.0.1:7001

and in the gateway's configuration:

    [entities.account_id]
    type = "string"
    [sources.accounts]
    kind = "sidecar"
    address = "http://127.0.0.1:7001"
    [views.accounts]
    source = "accounts"
    entities = ["account_id"]
    features = { balance = { type = "double" }, tier = { type = "string" },
                 overdrafts_90d = { type = "int64" } }

Three account ids stand in for a backend in trouble, to show what the gateway makes of each:
`acct_slow` answers after 3 s (features TIMED_OUT once the request's deadline passes),
`acct_down` fails the call with UNAVAILABLE (SOURCE_ERROR, class `unavailable`), `acct_busy`
with RESOURCE_EXHAUSTED and the trailer `fg-error-class: overloaded` (SOURCE_ERROR, class
`overloaded`). It serves no grpc.health.v1: the gateway takes UNIMPLEMENTED as healthy.
On start it prints `sidecar ready HOST:PORT`; SIGTERM or SIGINT stops it.
"""

import argparse
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

from featuregateway.v1 import feature_service_pb2 as fs
from featuregateway.v1 import fetcher_pb2 as fp
from featuregateway.v1 import fetcher_pb2_grpc as fp_grpc

VIEW = "accounts"
FEATURES = ("balance", "tier", "overdrafts_90d")
SLOW_SECONDS = 3.0


class CellError(str):
    """A value that could not be read: sent as Cell.error, the feature reads SOURCE_ERROR."""


# account_id -> feature -> value. None is a null (NULL_VALUE). acct_2's balance is an int: the
# gateway accepts an int64 where it declares a double.
TABLE = {
    "acct_1": {"balance": 1520.75, "tier": "gold", "overdrafts_90d": 0},
    "acct_2": {"balance": 12, "tier": None, "overdrafts_90d": 3},
    "acct_3": {"balance": CellError("balance not computed for closed accounts"), "tier": "basic",
               "overdrafts_90d": 1},
}  # fmt: skip


def cell(value) -> fp.Cell:
    if isinstance(value, CellError):
        return fp.Cell(error=str(value))  # no secret or personal data: callers see this text
    if value is None:
        return fp.Cell(value=fs.Value(null_value=fs.NULL_VALUE_NULL))
    if isinstance(value, bool):
        return fp.Cell(value=fs.Value(bool_value=value))
    if isinstance(value, int):
        return fp.Cell(value=fs.Value(int64_value=value))
    if isinstance(value, float):
        return fp.Cell(value=fs.Value(double_value=value))
    return fp.Cell(value=fs.Value(string_value=value))


class Accounts(fp_grpc.FetcherServicer):
    def Fetch(self, request: fp.FetchRequest, context: grpc.ServicerContext) -> fp.FetchResponse:
        # A gRPC error fails the whole batch: every key of the call gets the same status.
        if request.view != VIEW:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown view `{request.view}`")
        for feature in request.features:
            if feature not in FEATURES:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no feature `{feature}`")
        rows = []
        for key in request.keys:
            # One part per entity of the view, in its order; account_id is a string entity.
            account = key.parts[0].string_value if len(key.parts) == 1 else ""
            if account == "acct_slow":
                # The deadline arrives as grpc-timeout. Past it the gateway has stopped waiting:
                # stop working then, and answer DEADLINE_EXCEEDED rather than late rows.
                remaining = context.time_remaining()
                if remaining is not None and remaining < SLOW_SECONDS:
                    time.sleep(max(remaining, 0))
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed")
                time.sleep(SLOW_SECONDS)
            elif account == "acct_down":
                context.abort(grpc.StatusCode.UNAVAILABLE, "the accounts backend is down")
            elif account == "acct_busy":
                context.set_trailing_metadata((("fg-error-class", "overloaded"),
                                               ("fg-retryable", "false")))  # fmt: skip
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in flight")
            row = TABLE.get(account)
            if row is None:
                rows.append(fp.Row(found=False))  # NOT_FOUND
            else:
                # One cell per requested feature, in the request's order.
                rows.append(fp.Row(found=True, cells=[cell(row[f]) for f in request.features]))
        # One row per key, in the request's order.
        return fp.FetchResponse(rows=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:7001", help="host:port (port 0: any)")
    args = parser.parse_args(argv)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    fp_grpc.add_FetcherServicer_to_server(Accounts(), server)
    try:
        port = server.add_insecure_port(args.listen)  # plaintext HTTP/2, as the gateway calls
    except RuntimeError as e:
        port = 0
        print(f"sidecar: cannot listen on {args.listen}: {e}", file=sys.stderr)
    if port == 0:
        return 1
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"sidecar ready {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop.wait()
    server.stop(grace=2).wait()  # finish the calls in flight
    return 0


if __name__ == "__main__":
    sys.exit(main())
