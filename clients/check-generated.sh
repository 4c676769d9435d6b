#!/usr/bin/env bash
# Fails (exit 1, printing a diff) when a checked-in generated client file is out of date with
# proto/, or when one is missing or left over. Regenerates into a temporary directory with the
# same pinned tools as generate.sh and compares; the working tree is never touched.
# The fix is always: clients/generate.sh, then commit the result.
set -euo pipefail
clients="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$clients/generate.sh" "$tmp" >/dev/null

status=0
# The Go directory holds generated files only, so any difference at all is a stale file.
diff -ru "$clients/go/featuregatewayv1" "$tmp/go/featuregatewayv1" || status=1
# The Python package also holds hand-written files (__init__.py) and Python's caches.
diff -ru -x __init__.py -x __pycache__ -x '*.pyc' \
  "$clients/python/featuregateway/v1" "$tmp/python/featuregateway/v1" || status=1

if [ $status -ne 0 ]; then
  echo "clients/check-generated: FAILED: the checked-in clients are out of date with proto/ (diff above: checked-in vs regenerated); run clients/generate.sh and commit the result" >&2
  exit 1
fi
echo "clients/check-generated: ok (go/featuregatewayv1 and python/featuregateway/v1 match proto/)"
