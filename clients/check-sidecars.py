#!/usr/bin/env python3
"""Runs each example sidecar (clients/python/sidecar_example.py, clients/go/cmd/sidecar) behind
the real gateway and checks, through the gateway's FeatureService, what docs/sidecars.md says:

  shape      acct_1 PRESENT with its values; acct_2's int64 balance served as a double, its null
             tier NULL_VALUE; acct_3's Cell.error SOURCE_ERROR with the sidecar's text as detail
             and the rest of the row PRESENT; an unknown account NOT_FOUND ("no row for ...")
  health     feature_gateway_source_up{source="accounts"} is 1 (Go serves grpc.health.v1,
             Python does not: UNIMPLEMENTED counts as healthy)
  deadline   acct_slow (a 3 s answer) is TIMED_OUT at the feature service's 1 s deadline
  errors     UNAVAILABLE -> SOURCE_ERROR `unavailable`; RESOURCE_EXHAUSTED with the trailer
             fg-error-class: overloaded -> SOURCE_ERROR `overloaded`
  restart    the sidecar killed (SIGKILL): SOURCE_ERROR `unavailable` at once; started again on
             the same port, the same gateway process serves PRESENT again

    clients/python/.venv/bin/python clients/check-sidecars.py GATEWAY_BIN [python|go ...]

clients/test.sh runs it with the gateway it built. Every wait is bounded; servers listen on
127.0.0.1 only; every process started is stopped on exit. Exit code 1 when a check failed.
"""

import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLIENTS = Path(__file__).resolve().parent
sys.path.insert(0, str(CLIENTS / "python"))

import grpc  # noqa: E402

from featuregateway.v1 import feature_service_pb2 as fs  # noqa: E402
from featuregateway.v1 import feature_service_pb2_grpc as fs_grpc  # noqa: E402

FEATURES = ["accounts:balance", "accounts:tier", "accounts:overdrafts_90d"]
GATEWAY_CONFIG = """
[entities.account_id]
type = "string"

[sources.accounts]
kind = "sidecar"
address = "http://{addr}"
connect_timeout = "250ms"
required = true

[views.accounts]
source = "accounts"
entities = ["account_id"]
[views.accounts.features]
balance = {{ type = "double" }}
tier = {{ type = "string" }}
overdrafts_90d = {{ type = "int64" }}

[feature_services.accounts_v1]
deadline = "1s"
features = {features}
"""
PRESENT, NOT_FOUND, NULL_VALUE, TIMED_OUT, SOURCE_ERROR = (
    fs.FEATURE_STATUS_PRESENT, fs.FEATURE_STATUS_NOT_FOUND, fs.FEATURE_STATUS_NULL_VALUE,
    fs.FEATURE_STATUS_TIMED_OUT, fs.FEATURE_STATUS_SOURCE_ERROR,
)  # fmt: skip


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def start(cmd, log: Path, pattern: str, timeout: float = 30.0):
    """Starts cmd (stdout to log.out, stderr to log) and returns (process, first group of
    pattern in its stdout)."""
    out = log.with_suffix(".out")
    with out.open("wb") as stdout, log.open("ab") as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(pattern, out.read_text())
        if m:
            return proc, m.group(1)
        time.sleep(0.05)
    stop(proc)
    raise Failed(f"{cmd[0]} did not print its ready line; its log:\n{log.read_text()[-3000:]}")


def stop(proc, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(name: str, sidecar_cmd, gateway_bin: str, work: Path) -> None:
    log = work / f"{name}-sidecar.log"
    sidecar, addr = start(sidecar_cmd + ["--listen", "127.0.0.1:0"], log, r"sidecar ready (\S+)")
    config = work / f"{name}-gateway.toml"
    config.write_text(GATEWAY_CONFIG.format(addr=addr, features=str(FEATURES).replace("'", '"')))
    gw_log = work / f"{name}-gateway.log"
    gateway = None
    try:
        gateway, ready = start([gateway_bin, "serve", "--config", str(config), "--listen",
                                "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], gw_log,
                               r"feature-gateway ready (grpc=\S+ admin=\S+)")  # fmt: skip
        grpc_addr, admin = (part.split("=", 1)[1] for part in ready.split())
        with grpc.insecure_channel(grpc_addr) as channel:
            stub = fs_grpc.FeatureServiceStub(channel)

            def get(account: str):
                request = fs.GetFeaturesRequest(
                    feature_service="accounts_v1", include_metadata=True,
                    entities={"account_id": fs.Value(string_value=account)})  # fmt: skip
                started = time.monotonic()
                r = stub.GetFeatures(request, timeout=10)
                took = time.monotonic() - started
                return r, list(r.statuses), [m.detail for m in r.metadata], took

            # health: the gateway checked the sidecar before it answered its first call.
            metrics = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
            up = re.search(r'^feature_gateway_source_up\{source="accounts"\} (\S+)$', metrics, re.M)
            check(up is not None and up.group(1) == "1", f"source_up: {up and up.group(0)}")

            r, st, detail, _ = get("acct_1")
            check(st == [PRESENT] * 3, f"acct_1: {st} {detail}")
            check(r.values[0].double_value == 1520.75 and r.values[1].string_value == "gold"
                  and r.values[2].WhichOneof("kind") == "int64_value", f"acct_1: {r.values}")
            r, st, detail, _ = get("acct_2")
            check(st == [PRESENT, NULL_VALUE, PRESENT], f"acct_2: {st} {detail}")
            balance = r.values[0]
            check(balance.WhichOneof("kind") == "double_value" and balance.double_value == 12,
                  f"acct_2's int64 balance served as a double: {balance}")  # fmt: skip
            check(detail[1] == "null in the row", f"acct_2: {detail}")
            r, st, detail, _ = get("acct_3")
            check(st == [SOURCE_ERROR, PRESENT, PRESENT], f"acct_3: {st} {detail}")
            check(detail[0] == "balance not computed for closed accounts", f"acct_3: {detail}")
            r, st, detail, _ = get("acct_404")
            check(st == [NOT_FOUND] * 3 and detail[0] == "no row for account_id", f"{st} {detail}")
            shown = "PRESENT, int64 as double, NULL_VALUE, Cell.error, NOT_FOUND, source_up 1"
            print(f"  {name}: {shown}: ok")

            r, st, detail, took = get("acct_slow")
            check(st == [TIMED_OUT] * 3 and detail[0] == "timeout", f"acct_slow: {st} {detail}")
            check(took < 2.5, f"acct_slow answered after {took:.2f} s, not at the 1 s deadline")
            print(f"  {name}: a 3 s answer TIMED_OUT after {took:.2f} s (deadline 1 s): ok")

            for account, code, cls in [
                ("acct_down", "UNAVAILABLE", "unavailable"),
                ("acct_busy", "RESOURCE_EXHAUSTED", "overloaded"),
            ]:
                r, st, detail, _ = get(account)
                check(st == [SOURCE_ERROR] * 3 and detail == [cls] * 3, f"{account}: {st} {detail}")
                print(f"  {name}: {code} -> SOURCE_ERROR {cls}: ok")
            # The status message is in the gateway's log (never in the callers' detail).
            check("the accounts backend is down" in gw_log.read_text(), "no message in the log")

            stop(sidecar, signal.SIGKILL)
            r, st, detail, took = get("acct_1")
            check(st == [SOURCE_ERROR] * 3 and detail[0] == "unavailable", f"killed: {st} {detail}")
            check(took < 2.0, f"a killed sidecar took {took:.2f} s to fail")
            for _ in range(10):  # the port may take a moment to be free again
                try:
                    cmd = sidecar_cmd + ["--listen", addr]
                    sidecar, _ = start(cmd, log, r"sidecar ready (\S+)", timeout=10)
                    break
                except Failed:
                    time.sleep(0.25)
            else:
                raise Failed(f"the sidecar did not start again on {addr}; log:\n{log.read_text()}")
            for _ in range(100):  # 10 s at most
                r, st, detail, _ = get("acct_1")
                if st == [PRESENT] * 3:
                    break
                time.sleep(0.1)
            check(st == [PRESENT] * 3, f"after the restart: {st} {detail}")
            check(gateway.poll() is None, "the gateway exited")
            print(f"  {name}: killed: SOURCE_ERROR unavailable ({took:.2f} s); restarted: PRESENT")
    except Failed as e:
        raise Failed(f"{e}\n--- gateway log:\n{gw_log.read_text()[-3000:]}") from None
    finally:
        if gateway is not None:
            stop(gateway)
        stop(sidecar)


def main(argv) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    gateway_bin, names = argv[0], argv[1:] or ["python", "go"]
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in names:
            started = time.monotonic()
            try:
                if name == "python":
                    cmd = [sys.executable, str(CLIENTS / "python" / "sidecar_example.py")]
                elif name == "go":
                    cmd = [str(work / "sidecar-go")]
                    subprocess.run(["go", "build", "-o", cmd[0], "./cmd/sidecar"],
                                   cwd=CLIENTS / "go", check=True)  # fmt: skip
                else:
                    raise Failed(f"unknown sidecar {name!r} (python, go)")
                run(name, cmd, gateway_bin, work)
                print(f"check-sidecars: {name}: ok ({time.monotonic() - started:.1f} s)")
            except (Failed, subprocess.CalledProcessError, OSError) as e:
                print(f"check-sidecars: {name}: FAILED: {e}", file=sys.stderr)
                failed.append(name)
    if failed:
        print(f"check-sidecars: FAILED: {' '.join(failed)}", file=sys.stderr)
        return 1
    print("check-sidecars: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
