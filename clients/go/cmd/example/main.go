// Command example fetches the demo's fraud_v1 feature vector from a running feature-gateway and
// prints one line per feature: name, value, status.
//
//	cargo run --release -p feature-gateway -- demo          # in another terminal
//	go run ./cmd/example -addr 127.0.0.1:50051 -user u_00042
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	fgv1 "github.com/feature-gateway/feature-gateway/clients/go/featuregatewayv1"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is main with its arguments and output passed in, so that main_test.go can run it.
func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("example", flag.ContinueOnError)
	flags.SetOutput(stderr)
	addr := flags.String("addr", "127.0.0.1:50051", "gateway gRPC address host:port")
	user := flags.String("user", "u_00042", "user_id entity key")
	card := flags.String("card", "c_00042", "card_id entity key")
	merchant := flags.String("merchant", "m_0042", "merchant_id entity key")
	// The deadline travels to the gateway as grpc-timeout: it is how the gateway learns this
	// caller's budget and answers inside it (late features come back TIMED_OUT, not an error).
	timeout := flags.Duration("timeout", 200*time.Millisecond, "deadline of the call")
	if err := flags.Parse(args); err != nil {
		return 2
	}

	// One connection per process, shared by every call: gRPC multiplexes calls over it.
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "connect %s: %v\n", *addr, err)
		return 1
	}
	defer conn.Close()
	// Connect before the first deadline-bound call: a connection is made lazily, and the first
	// call would otherwise spend its budget on the TCP and HTTP/2 handshakes. A prediction
	// service does this once at start-up.
	if err := awaitReady(conn, 5*time.Second); err != nil {
		fmt.Fprintf(stderr, "connect %s: %v\n", *addr, err)
		return 1
	}
	client := fgv1.NewFeatureServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	resp, err := client.GetFeatures(ctx, &fgv1.GetFeaturesRequest{
		FeatureService: "fraud_v1",
		Entities: map[string]*fgv1.Value{
			"user_id":     str(*user),
			"card_id":     str(*card),
			"merchant_id": str(*merchant),
		},
		Context: map[string]*fgv1.Value{
			"amount":   {Kind: &fgv1.Value_DoubleValue{DoubleValue: 129.99}},
			"currency": str("USD"),
			"channel":  str("ecom"),
		},
	})
	if err != nil {
		// A bad request (unknown feature service, missing or mistyped key) is the only error;
		// its status message names the offending field.
		fmt.Fprintf(stderr, "GetFeatures: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "request_id %s\n", resp.GetRequestId())
	for i, name := range resp.GetFeatureNames() {
		fmt.Fprintf(stdout, "%-36s %-24s %s\n", name, format(resp.GetValues()[i]),
			strings.TrimPrefix(resp.GetStatuses()[i].String(), "FEATURE_STATUS_"))
	}
	return 0
}

// awaitReady connects conn and waits until it is ready, for at most timeout.
func awaitReady(conn *grpc.ClientConn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn.Connect()
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if !conn.WaitForStateChange(ctx, state) {
			return fmt.Errorf("not ready after %v (state %v)", timeout, state)
		}
	}
	return nil
}

func str(s string) *fgv1.Value { return &fgv1.Value{Kind: &fgv1.Value_StringValue{StringValue: s}} }

// format renders a Value's oneof for humans; an unset kind means null (see the feature's status).
func format(v *fgv1.Value) string {
	switch k := v.GetKind().(type) {
	case *fgv1.Value_Int64Value:
		return fmt.Sprint(k.Int64Value)
	case *fgv1.Value_DoubleValue:
		return fmt.Sprint(k.DoubleValue)
	case *fgv1.Value_StringValue:
		return fmt.Sprintf("%q", k.StringValue)
	case *fgv1.Value_BoolValue:
		return fmt.Sprint(k.BoolValue)
	case *fgv1.Value_BytesValue:
		return fmt.Sprintf("%x", k.BytesValue)
	case *fgv1.Value_TimestampValue:
		return k.TimestampValue.AsTime().Format(time.RFC3339Nano)
	case *fgv1.Value_Int64ListValue:
		return fmt.Sprint(k.Int64ListValue.GetValues())
	case *fgv1.Value_DoubleListValue:
		return fmt.Sprint(k.DoubleListValue.GetValues())
	case *fgv1.Value_StringListValue:
		return fmt.Sprintf("%q", k.StringListValue.GetValues())
	default:
		return "null"
	}
}
