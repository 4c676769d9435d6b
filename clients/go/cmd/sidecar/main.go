// Command sidecar is an example sidecar fetcher: it serves the view `accounts` from a small
// in-memory table over the gateway's sidecar contract (service featuregateway.v1.Fetcher of
// fetcher.proto; the whole contract is in docs/sidecars.md), and grpc.health.v1.
//
//	go run ./cmd/sidecar -listen 127.0.0.1:7001
//
// The gateway's configuration for it (a `sidecar` source at http://127.0.0.1:7001 and the view
// `accounts`: balance double, tier string, overdrafts_90d int64) is in docs/sidecars.md.
//
// Three account ids stand in for a backend in trouble, to show what the gateway makes of each:
// acct_slow answers after 3 s (features TIMED_OUT once the request's deadline passes),
// acct_down fails the call with UNAVAILABLE (SOURCE_ERROR, class `unavailable`), acct_busy with
// RESOURCE_EXHAUSTED and the trailer `fg-error-class: overloaded` (SOURCE_ERROR, class
// `overloaded`). On start it prints `sidecar ready HOST:PORT`; SIGTERM or SIGINT stops it.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	fgv1 "github.com/feature-gateway/feature-gateway/clients/go/featuregatewayv1"
)

const (
	view    = "accounts"
	slowFor = 3 * time.Second
)

var features = map[string]bool{"balance": true, "tier": true, "overdrafts_90d": true}

// cellError is a value that could not be read: sent as Cell.error, the feature reads
// SOURCE_ERROR with this text as its detail (so: no secret or personal data in it).
type cellError string

// account_id -> feature -> value. nil is a null (NULL_VALUE). acct_2's balance is an int64: the
// gateway accepts an int64 where it declares a double.
var table = map[string]map[string]any{
	"acct_1": {"balance": 1520.75, "tier": "gold", "overdrafts_90d": int64(0)},
	"acct_2": {"balance": int64(12), "tier": nil, "overdrafts_90d": int64(3)},
	"acct_3": {"balance": cellError("balance not computed for closed accounts"), "tier": "basic", "overdrafts_90d": int64(1)},
}

func cell(v any) *fgv1.Cell {
	val := &fgv1.Value{}
	switch v := v.(type) {
	case cellError:
		return &fgv1.Cell{Result: &fgv1.Cell_Error{Error: string(v)}}
	case nil:
		val.Kind = &fgv1.Value_NullValue{NullValue: fgv1.NullValue_NULL_VALUE_NULL}
	case int64:
		val.Kind = &fgv1.Value_Int64Value{Int64Value: v}
	case float64:
		val.Kind = &fgv1.Value_DoubleValue{DoubleValue: v}
	case string:
		val.Kind = &fgv1.Value_StringValue{StringValue: v}
	}
	return &fgv1.Cell{Result: &fgv1.Cell_Value{Value: val}}
}

type accounts struct {
	fgv1.UnimplementedFetcherServer
}

func (accounts) Fetch(ctx context.Context, req *fgv1.FetchRequest) (*fgv1.FetchResponse, error) {
	// A gRPC error fails the whole batch: every key of the call gets the same status.
	if req.GetView() != view {
		return nil, status.Errorf(codes.NotFound, "unknown view `%s`", req.GetView())
	}
	for _, f := range req.GetFeatures() {
		if !features[f] {
			return nil, status.Errorf(codes.InvalidArgument, "no feature `%s`", f)
		}
	}
	rows := make([]*fgv1.Row, 0, len(req.GetKeys()))
	for _, key := range req.GetKeys() {
		// One part per entity of the view, in its order; account_id is a string entity.
		account := ""
		if parts := key.GetParts(); len(parts) == 1 {
			account = parts[0].GetStringValue()
		}
		switch account {
		case "acct_slow":
			// The deadline arrives as grpc-timeout (ctx's deadline); past it the gateway no
			// longer waits, so stop working then.
			select {
			case <-time.After(slowFor):
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		case "acct_down":
			return nil, status.Error(codes.Unavailable, "the accounts backend is down")
		case "acct_busy":
			grpc.SetTrailer(ctx, metadata.Pairs("fg-error-class", "overloaded", "fg-retryable", "false"))
			return nil, status.Error(codes.ResourceExhausted, "too many calls in flight")
		}
		values, found := table[account]
		if !found {
			rows = append(rows, &fgv1.Row{Found: false}) // NOT_FOUND
			continue
		}
		// One cell per requested feature, in the request's order.
		cells := make([]*fgv1.Cell, 0, len(req.GetFeatures()))
		for _, f := range req.GetFeatures() {
			cells = append(cells, cell(values[f]))
		}
		rows = append(rows, &fgv1.Row{Found: true, Cells: cells})
	}
	// One row per key, in the request's order.
	return &fgv1.FetchResponse{Rows: rows}, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:7001", "host:port (port 0: any)")
	flag.Parse()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		os.Exit(1)
	}
	server := grpc.NewServer() // plaintext HTTP/2, as the gateway calls
	fgv1.RegisterFetcherServer(server, accounts{})
	// Service "" (the whole server) is SERVING from the start; the gateway asks about it.
	healthpb.RegisterHealthServer(server, health.NewServer())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.GracefulStop() // finish the calls in flight
	}()
	fmt.Printf("sidecar ready %s\n", lis.Addr())
	if err := server.Serve(lis); err != nil {
		fmt.Fprintf(os.Stderr, "sidecar: %v\n", err)
		os.Exit(1)
	}
}
