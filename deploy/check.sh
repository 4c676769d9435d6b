#!/usr/bin/env bash
# Checks the deployment (tests/run runs it after building the binaries): installs what is missing
# (deploy/setup.sh, idempotent), lints the chart with every values file in its ci/ directory,
# then runs deploy/test_chart.py: the Dockerfile linted (hadolint) and checked against the
# binary, the chart rendered and decoded strictly against the Kubernetes API types
# (deploy/kubecheck), its probes, ports, mounts and arguments checked against the binaries' real
# flags, values that make no sense refused by name, and both binaries run with the rendered
# arguments on a ConfigMap volume laid out as the kubelet does (probes, an in-place reload on a
# ConfigMap update, SIGTERM within the grace period).
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=versions.env
source ./versions.env
bash setup.sh

export HELM KUBECHECK KUBE_VERSION
HELM="$(go env GOPATH)/tools/helm-$HELM_VERSION/helm"
KUBECHECK="$PWD/.tools/kubecheck"

chart=helm/feature-gateway
for values in "$chart"/ci/*-values.yaml; do
  "$HELM" lint --strict --quiet --kube-version "$KUBE_VERSION" "$chart" -f "$values"
done
.venv/bin/python -W error::ResourceWarning test_chart.py
