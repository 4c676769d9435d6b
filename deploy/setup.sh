#!/usr/bin/env bash
# Installs what deploy/check.sh needs, at pinned versions, from the package registries only.
# Idempotent: a few seconds when everything is in place, so CI's setup calls it every time.
#   helm      `go install` from the Go module proxy into $(go env GOPATH)/tools/helm-$HELM_VERSION
#             (versioned, so another helm on PATH is neither used nor replaced; kept across
#             checkouts: a fresh machine builds it once, ~3 min on 2 cores, a rebuild from Go's
#             caches ~10 s)
#   .tools/kubecheck  deploy/kubecheck, built against the Kubernetes API types of the helm version
#   .venv     PyYAML, grpcio's health client and hadolint (requirements.txt)
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=versions.env
source ./versions.env

helm="$(go env GOPATH)/tools/helm-$HELM_VERSION/helm"
if [ "$(go version -m "$helm" 2>/dev/null | awk '$1 == "mod" { print $3 }')" != "$HELM_VERSION" ]; then
  echo "deploy/setup: installing helm $HELM_VERSION"
  GOBIN="$(dirname "$helm")" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

# Compiled on each run when out of date: Go's build cache makes an unchanged one a no-op.
(cd kubecheck && go build -o ../.tools/kubecheck .)

venv=.venv
stamp="$venv/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "deploy/setup: installing requirements.txt into deploy/$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  echo "$want" >"$stamp"
fi
