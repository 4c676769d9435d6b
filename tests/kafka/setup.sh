#!/usr/bin/env bash
# Resolves the Apache Kafka broker's jars (tests/kafka/pom.xml) from Maven Central into
# tests/kafka/lib, which the Kafka tests (tests/src/kafka.rs) and the training-log benchmark run
# with `java -cp 'lib/*'`. Idempotent: a lib/ made from the same pom.xml is kept as it is.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
stamp="$here/lib/.pom.sha256"
want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "tests/kafka/setup: resolving the Kafka broker's jars from Maven Central"
rm -rf "$here/lib.tmp"
mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
  -DoutputDirectory="$here/lib.tmp" -DincludeScope=runtime
rm -rf "$here/lib"
mv "$here/lib.tmp" "$here/lib"
echo "$want" >"$stamp"
