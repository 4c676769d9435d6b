#!/usr/bin/env bash
# Tests every generated client against a live gateway:
#   1. builds the gateway (cargo build --workspace --bins, the command tests/run builds with, so
#      it finds everything up to date there; honours CARGO_TARGET_DIR)
#   2. starts `feature-gateway demo` on loopback, port 0, and reads its address from the ready line
#   3. check-generated.sh: the checked-in Go and Python clients match proto/; check-docs.py: what
#      README.md and clients/README.md tell a caller to do (status names, the ghz command, the Go
#      package generated into another module, the Java warm-up), run against the gateway
#   4. Go (go test -v), Java (Maven Surefire), Python (pytest -v), each with FEATURE_GATEWAY_ADDR
#      set; each suite also runs its language's example and checks what it prints
#   5. check-sidecars.py: the example sidecars (Python, Go) each behind a gateway of its own, a
#      `serve` of the same binary whose `sidecar` source points at it (statuses, deadline, error
#      codes, a killed and restarted sidecar; see the script)
#   6. stops the gateway on exit, whatever happened (trap)
# Every step runs even when an earlier one failed, so one run shows every problem; the exit code
# is non-zero when any step failed. Tools come from clients/setup.sh, run first when missing.
set -uo pipefail
clients="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$clients")"
start=$SECONDS

if [ ! -x "$clients/python/.venv/bin/pytest" ] || [ ! -x "$clients/.tools/bin/protoc-gen-go" ] ||
  [ ! -x "$clients/.tools/bin/protoc-gen-go-grpc" ]; then
  echo "clients/test: tools missing; running clients/setup.sh"
  "$clients/setup.sh" || exit 1
fi

echo "clients/test: building the gateway"
(cd "$root" && cargo build --locked --workspace --bins) || exit 1
# Ask cargo where it put the binary rather than guessing: it resolves a relative
# CARGO_TARGET_DIR, and build.target-dir from a .cargo/config.toml, the same way as the build.
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')" || exit 1
bin="$target_dir/debug/feature-gateway"
[ -x "$bin" ] || { echo "clients/test: no $bin after the build" >&2; exit 1; }

work="$(mktemp -d)"
gw_pid=""
stop_gateway() {
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    # SIGTERM: the gateway finishes the calls in flight and exits 0.
    kill -TERM "$gw_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$gw_pid" 2>/dev/null
    wait "$gw_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap stop_gateway EXIT
trap 'exit 130' INT TERM

# --dir keeps the demo's config and tables in our temp dir, removed on exit.
"$bin" demo --dir "$work/demo" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  >"$work/gateway.out" 2>"$work/gateway.err" &
gw_pid=$!
addr=""
for _ in $(seq 300); do # up to 30 s: the machine may be busy
  addr="$(sed -n 's/^feature-gateway ready grpc=\([^ ]*\) .*/\1/p' "$work/gateway.out")"
  [ -n "$addr" ] && break
  kill -0 "$gw_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "clients/test: the gateway did not print its ready line; its stderr:" >&2
  cat "$work/gateway.err" >&2
  exit 1
fi
export FEATURE_GATEWAY_ADDR="$addr"
echo "clients/test: gateway ready at $FEATURE_GATEWAY_ADDR"

failed=()
step() { # step NAME COMMAND...: runs COMMAND, records NAME if it fails
  local name="$1"
  shift
  echo
  echo "=== clients/test: $name"
  "$@" || failed+=("$name")
}

step check-generated "$clients/check-generated.sh"
step check-docs python3 "$clients/check-docs.py"
# -count=1: never a cached result, the gateway under test is new each run.
step go bash -c 'cd "$1/go" && go vet ./... && go test -v -count=1 ./...' _ "$clients"
# Not -q: it would hide Surefire's "Tests run:" summary. -ntp: no download progress noise.
step java bash -c 'cd "$1/java" && mvn -B -ntp -Dstyle.color=never test' _ "$clients"
step python bash -c 'cd "$1/python" && .venv/bin/python -m pytest -v' _ "$clients"
step sidecars "$clients/python/.venv/bin/python" "$clients/check-sidecars.py" "$bin"

if ! kill -0 "$gw_pid" 2>/dev/null; then
  echo "clients/test: the gateway exited during the tests; its stderr:" >&2
  cat "$work/gateway.err" >&2
  failed+=(gateway)
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "clients/test: FAILED: ${failed[*]} ($((SECONDS - start)) s)"
  exit 1
fi
echo "clients/test: ok: check-generated, check-docs, go, java, python, sidecars ($((SECONDS - start)) s)"
