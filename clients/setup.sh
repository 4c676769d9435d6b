#!/usr/bin/env bash
# Installs what generate.sh, check-generated.sh and test.sh need, at pinned versions, from the
# package registries only (PyPI, the Go module proxy, Maven Central). Idempotent: when everything
# is already in place it takes a few seconds, so CI's setup can call it every time.
#   clients/python/.venv   grpcio, grpcio-tools (which also provides protoc), protobuf, pytest
#   clients/.tools/bin     protoc-gen-go and protoc-gen-go-grpc (kept out of $GOPATH/bin so that a
#                          different version installed there for another project cannot change
#                          the generated code)
#   Go module cache        the client module's dependencies (go mod download)
#   ~/.m2                  the Java client's plugins and dependencies, including protoc and
#                          protoc-gen-grpc-java, by compiling it once without running tests
# Needs go, python3 (with venv), java 17 and mvn on PATH.
set -euo pipefail
cd "$(dirname "$0")"
clients="$(pwd)"
# shellcheck source=versions.env
source ./versions.env

# Python: recreate the venv's packages only when requirements.txt changed since the last install.
venv=python/.venv
stamp="$venv/.requirements.sha256"
want="$(sha256sum python/requirements.txt | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "clients/setup: creating $venv"
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "clients/setup: installing python/requirements.txt into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r python/requirements.txt
  echo "$want" >"$stamp"
fi

# Go plugins: reinstall only when the installed binary reports another version.
tools="$clients/.tools/bin"
mkdir -p "$tools"
if [ "$("$tools/protoc-gen-go" --version 2>/dev/null || true)" != "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]; then
  echo "clients/setup: installing protoc-gen-go $PROTOC_GEN_GO_VERSION"
  GOBIN="$tools" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
# protoc-gen-go-grpc prints its version without the leading "v".
if [ "$("$tools/protoc-gen-go-grpc" --version 2>/dev/null || true)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]; then
  echo "clients/setup: installing protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION"
  GOBIN="$tools" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

# Go module dependencies (pinned by go.mod / go.sum); a no-op when already in the module cache.
(cd go && go mod download)

# Java: fetch the Maven plugins and dependencies now, so that a registry problem shows up here
# rather than in the middle of the test run. Maven skips what ~/.m2 already has.
(cd java && mvn -q -B -Dstyle.color=never -DskipTests test-compile)

echo "clients/setup: ok (grpcio-tools $(grep -oP '^grpcio-tools==\K.*' python/requirements.txt)," \
  "protoc-gen-go $PROTOC_GEN_GO_VERSION, protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION)"
