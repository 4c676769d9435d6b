// Package balance connects a Go client to several feature-gateway replicas at once: calls are
// spread over every ready replica in turn (gRPC's round_robin), and a call that a replica could
// not answer because it went away (UNAVAILABLE: killed, restarted, drained) is sent again to
// another one, within the call's own deadline.
//
// The replicas are either a fixed list of addresses ([Dial]) or every address a DNS name lists
// ([ServiceConfig] with a dns:/// target, e.g. the Helm chart's headless Service):
//
//	conn, err := grpc.NewClient("dns:///feature-gateway-headless.ml.svc.cluster.local:50051",
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithDefaultServiceConfig(balance.ServiceConfig))
//
// Only reads are retried: GetFeatures, GetFeaturesBatch, ListFeatureServices and
// DescribeFeatureService. PushEvents is not, since a push a replica applied just before it went
// away would be applied twice.
//
// gRPC's retry policy never retries a call whose response headers arrived: a replica killed
// between writing an answer's headers and its message leaves such a call UNAVAILABLE.
// [RetryInterrupted] retries those reads too; [Dial] installs it, and a client of a dns:///
// target adds it with grpc.WithChainUnaryInterceptor.
package balance

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// ServiceConfig is the gRPC service config of a client of several replicas:
//   - loadBalancingConfig round_robin: one connection per replica, each call on the next ready
//     one (the default, pick_first, would send every call to the first address);
//   - retryPolicy on the read methods: a call failing UNAVAILABLE (its replica's connection
//     ended, or no replica was ready) is sent again up to twice more, after 5 ms then 10 ms (with
//     jitter), to whichever replica is ready then, never past the call's deadline. A call that
//     got an answer, any answer, is not retried: the gateway reports a failing source in the
//     features' statuses, not as an error;
//   - retryThrottling: retries stop while more than half of a 100-token budget is spent (each
//     failure spends one, each success gives back 0.1), so a client facing replicas that all
//     fail does not multiply its load on them. Losing a replica costs its in-flight calls only,
//     far below that.
const ServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [
      {"service": "featuregateway.v1.FeatureService", "method": "GetFeatures"},
      {"service": "featuregateway.v1.FeatureService", "method": "GetFeaturesBatch"},
      {"service": "featuregateway.v1.FeatureService", "method": "ListFeatureServices"},
      {"service": "featuregateway.v1.FeatureService", "method": "DescribeFeatureService"}
    ],
    "retryPolicy": {
      "maxAttempts": 3,
      "initialBackoff": "0.005s",
      "maxBackoff": "0.05s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }],
  "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1}
}`

// reads are the methods [ServiceConfig] retries, by their full names.
var reads = map[string]bool{
	"/featuregateway.v1.FeatureService/GetFeatures":            true,
	"/featuregateway.v1.FeatureService/GetFeaturesBatch":       true,
	"/featuregateway.v1.FeatureService/ListFeatureServices":    true,
	"/featuregateway.v1.FeatureService/DescribeFeatureService": true,
}

// interruptedRetries is how many times [RetryInterrupted] sends a read again.
const interruptedRetries = 2

// RetryInterrupted is a unary client interceptor that sends a read again (up to twice, each time
// with the service config's own retries) when it failed UNAVAILABLE after its response headers
// arrived: the replica went away in the middle of its answer. gRPC's retry policy leaves such a
// call alone (a call that received headers is committed to its replica). Any other outcome,
// and every method that is not a read, is returned as it is. The call's deadline bounds every
// attempt.
func RetryInterrupted(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if !reads[method] {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	for retry := 0; ; retry++ {
		var header metadata.MD
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&header))...)
		interrupted := status.Code(err) == codes.Unavailable && len(header) > 0
		if !interrupted || retry == interruptedRetries || ctx.Err() != nil {
			return err
		}
	}
}

// Dial returns a client connection to the replicas at addrs (host:port each) with
// [ServiceConfig] and [RetryInterrupted]. opts come after the ones Dial sets (transport
// credentials are the caller's to give). Like grpc.NewClient, it connects lazily: call Connect
// and wait for Ready before the first deadline-bound call.
func Dial(addrs []string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("balance.Dial: no address")
	}
	endpoints := make([]resolver.Endpoint, len(addrs))
	for i, addr := range addrs {
		endpoints[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}}
	}
	// A resolver of this connection's own, holding the fixed list.
	r := manual.NewBuilderWithScheme("feature-gateway-replicas")
	r.InitialState(resolver.State{Endpoints: endpoints})
	all := append([]grpc.DialOption{
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(ServiceConfig),
		grpc.WithChainUnaryInterceptor(RetryInterrupted),
	}, opts...)
	return grpc.NewClient(r.Scheme()+":///replicas", all...)
}
