#!/usr/bin/env bash
# Regenerates every checked-in client from proto/:
#   clients/go/featuregatewayv1/*.go          protoc-gen-go + protoc-gen-go-grpc
#   clients/python/featuregateway/v1/*_pb2*   grpcio-tools (messages, stubs and .pyi type hints)
# The Java client needs nothing here: Maven generates its stubs from proto/ at every build.
#
#   clients/generate.sh            rewrite the checked-in files
#   clients/generate.sh OUT_DIR    write the same tree under OUT_DIR instead (check-generated.sh)
#
# One protoc for both languages: the one bundled in the pinned grpcio-tools (clients/setup.sh
# installs it and the pinned Go plugins); any other version is refused, since the generated
# files record the generator versions and would differ from the checked-in ones.
set -euo pipefail
clients="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$clients")"
out="${1:-$clients}"
# shellcheck source=versions.env
source "$clients/versions.env"

py="$clients/python/.venv/bin/python"
tools="$clients/.tools/bin"
fail() { echo "clients/generate: $*; run clients/setup.sh" >&2; exit 1; }
[ -x "$py" ] || fail "missing $py"
"$py" -c 'import grpc_tools' 2>/dev/null || fail "grpcio-tools is not installed in clients/python/.venv"
[ "$("$tools/protoc-gen-go" --version 2>/dev/null || true)" = "protoc-gen-go $PROTOC_GEN_GO_VERSION" ] ||
  fail "$tools/protoc-gen-go is not $PROTOC_GEN_GO_VERSION"
[ "$("$tools/protoc-gen-go-grpc" --version 2>/dev/null || true)" = "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ] ||
  fail "$tools/protoc-gen-go-grpc is not $PROTOC_GEN_GO_GRPC_VERSION"

# Paths relative to proto/ (the import root), sorted so the output does not depend on readdir.
cd "$root/proto"
mapfile -t protos < <(find featuregateway -name '*.proto' | LC_ALL=C sort)
[ ${#protos[@]} -gt 0 ] || { echo "clients/generate: no .proto files under proto/" >&2; exit 1; }

# Remove what the previous run generated, so that a deleted .proto leaves no orphan behind.
# The Go directory holds generated code only; in Python the hand-written __init__.py stays.
gen_go="$out/go/featuregatewayv1"
gen_py="$out/python/featuregateway/v1"
rm -rf "$gen_go"
mkdir -p "$gen_go" "$gen_py"
rm -f "$gen_py"/*_pb2.py "$gen_py"/*_pb2.pyi "$gen_py"/*_pb2_grpc.py

# PATH first holds the pinned plugins: protoc finds protoc-gen-NAME for --NAME_out on PATH.
# `python -m grpc_tools.protoc` adds grpcio-tools' copy of the well-known types
# (google/protobuf/timestamp.proto) to the include path itself.
# Go: module= strips the module path from go_package, so files land in go/featuregatewayv1/.
PATH="$tools:$PATH" "$py" -m grpc_tools.protoc -I . \
  --go_out="$out/go" --go_opt=module=github.com/feature-gateway/feature-gateway/clients/go \
  --go-grpc_out="$out/go" --go-grpc_opt=module=github.com/feature-gateway/feature-gateway/clients/go \
  "${protos[@]}"
# Python: with proto/ as the import root, the modules import each other as
# `from featuregateway.v1 import ...`, which is exactly the package's layout under python/.
"$py" -m grpc_tools.protoc -I . \
  --python_out="$out/python" --pyi_out="$out/python" --grpc_python_out="$out/python" \
  "${protos[@]}"

echo "clients/generate: ${#protos[@]} protos -> $gen_go, $gen_py"
