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
	"google.golang.org/grpc/metadata"
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

// invoker answers each call with the next outcome: an error, and whether the response headers
// had arrived before it (as a replica killed in the middle of its answer leaves a call).
type invoker struct {
	outcomes []outcome
	calls    int
}

type outcome struct {
	err     error
	headers bool
}

func (f *invoker) invoke(_ context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
	o := f.outcomes[min(f.calls, len(f.outcomes)-1)]
	f.calls++
	if o.headers {
		for _, opt := range opts {
			if h, ok := opt.(grpc.HeaderCallOption); ok {
				*h.HeaderAddr = metadata.Pairs("content-type", "application/grpc")
			}
		}
	}
	return o.err
}

var reset = status.Error(codes.Unavailable, "error reading from server: connection reset by peer")

// A read interrupted after its headers is sent again; one that failed before them (which the
// service config's retries already handled), a push, and any other error are not.
func TestRetryInterruptedSendsAnInterruptedReadAgain(t *testing.T) {
	const get = "/featuregateway.v1.FeatureService/GetFeatures"
	const push = "/featuregateway.v1.FeatureService/PushEvents"
	cases := []struct {
		name     string
		method   string
		outcomes []outcome
		calls    int
		code     codes.Code
	}{
		{"interrupted then answered", get, []outcome{{reset, true}, {nil, true}}, 2, codes.OK},
		{"interrupted on every replica", get, []outcome{{reset, true}}, 3, codes.Unavailable},
		{"unavailable before any header", get, []outcome{{reset, false}, {nil, true}}, 1, codes.Unavailable},
		{"another error", get, []outcome{{status.Error(codes.InvalidArgument, "x"), true}}, 1, codes.InvalidArgument},
		{"a push is never sent twice", push, []outcome{{reset, true}, {nil, true}}, 1, codes.Unavailable},
	}
	for _, c := range cases {
		f := &invoker{outcomes: c.outcomes}
		err := balance.RetryInterrupted(context.Background(), c.method, nil, nil, nil, f.invoke)
		if status.Code(err) != c.code || f.calls != c.calls {
			t.Errorf("%s: %d calls, %v; want %d calls, %v", c.name, f.calls, err, c.calls, c.code)
		}
	}
	// A call past its deadline is not sent again.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := &invoker{outcomes: []outcome{{reset, true}, {nil, true}}}
	if err := balance.RetryInterrupted(ctx, get, nil, nil, nil, f.invoke); status.Code(err) != codes.Unavailable || f.calls != 1 {
		t.Errorf("cancelled: %d calls, %v", f.calls, err)
	}
}
