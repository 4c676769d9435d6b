// Tests of package balance against a live gateway running the embedded demo, whose gRPC address
// clients/test.sh passes in FEATURE_GATEWAY_ADDR. The replicas' behaviour under load and when one
// is killed is tested end to end by tests/tests/replicas.rs (three gateways, one Redis Cluster).
package balance_test

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/feature-gateway/feature-gateway/clients/go/balance"
	fgv1 "github.com/feature-gateway/feature-gateway/clients/go/featuregatewayv1"
)

func gatewayAddr(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("FEATURE_GATEWAY_ADDR")
	if addr == "" {
		t.Skip("FEATURE_GATEWAY_ADDR is not set; clients/test.sh starts a gateway and sets it")
	}
	return addr
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func describe(client fgv1.FeatureServiceClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.DescribeFeatureService(ctx, &fgv1.DescribeFeatureServiceRequest{Name: "fraud_v1"})
	return err
}

// A replica that is down is skipped: every call reaches the live one.
func TestCallsSkipAReplicaThatIsDown(t *testing.T) {
	conn, err := balance.Dial([]string{deadAddr(t), gatewayAddr(t), deadAddr(t)},
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := fgv1.NewFeatureServiceClient(conn)
	for i := range 30 {
		if err := describe(client); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}

// With no replica up, a call fails UNAVAILABLE once its retries are spent, within its deadline.
func TestNoReplicaUpIsUnavailable(t *testing.T) {
	conn, err := balance.Dial([]string{deadAddr(t), deadAddr(t)},
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	started := time.Now()
	err = describe(fgv1.NewFeatureServiceClient(conn))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want UNAVAILABLE", err)
	}
	if took := time.Since(started); took > 5*time.Second+time.Second {
		t.Fatalf("took %v, past the call's 5 s deadline", took)
	}
}

func TestDialNeedsAnAddress(t *testing.T) {
	if _, err := balance.Dial(nil); err == nil {
		t.Fatal("Dial(nil) succeeded")
	}
}
