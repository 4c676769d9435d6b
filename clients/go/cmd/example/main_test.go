package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestExample runs the example against the live gateway (FEATURE_GATEWAY_ADDR, set by
// clients/test.sh) and checks what it prints: the request id, then 20 features, all PRESENT.
func TestExample(t *testing.T) {
	addr := os.Getenv("FEATURE_GATEWAY_ADDR")
	if addr == "" {
		t.Skip("FEATURE_GATEWAY_ADDR is not set; clients/test.sh starts a gateway and sets it")
	}
	var stdout, stderr bytes.Buffer
	// A deadline well above the default: the test machine is shared and busy.
	if code := run([]string{"-addr", addr, "-user", "u_00042", "-timeout", "5s"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit code %d, stderr: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 21 || !strings.HasPrefix(lines[0], "request_id ") {
		t.Fatalf("want a request_id line and 20 feature lines, got:\n%s", stdout.String())
	}
	if !strings.HasPrefix(lines[1], "txn:amount ") || !strings.Contains(lines[1], "129.99") {
		t.Errorf("first feature line = %q, want txn:amount 129.99", lines[1])
	}
	for _, line := range lines[1:] {
		if !strings.HasSuffix(line, " PRESENT") {
			t.Errorf("feature line %q is not PRESENT", line)
		}
	}
}
