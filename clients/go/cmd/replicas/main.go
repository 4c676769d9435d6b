// Command replicas calls GetFeatures on several feature-gateway replicas through one client
// connection balanced by package balance (round_robin, reads retried on UNAVAILABLE), from
// concurrent loops for a fixed time, checks every answer against the expected rows, and prints
// one JSON object: calls, answers right, wrong and not PRESENT, errors by code, attempts (retries
// included), throughput, latency percentiles and calls per second.
//
//	go run ./cmd/replicas -addrs 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 \
//	    -service stats -entities user_id -rows users.csv -concurrency 16 -duration 10s
//
// The rows file is CSV: a header naming the entity keys (-entities) and features as the answer
// names them (feature_names), then one row per entity with the values expected, which the loops
// ask for in turn. A value is compared by its type in the answer: integers, strings and bools
// exactly, doubles within a relative 1e-12 of the file's (a sum computed elsewhere in another
// order may differ in its last bit).
package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/feature-gateway/feature-gateway/clients/go/balance"
	fgv1 "github.com/feature-gateway/feature-gateway/clients/go/featuregatewayv1"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// Report is what the command prints.
type Report struct {
	// Calls made (each once, whatever its attempts).
	Calls int64 `json:"calls"`
	// Answers with every feature PRESENT and equal to its row.
	Right int64 `json:"right"`
	// Answers with a PRESENT feature whose value differs from its row.
	Wrong int64 `json:"wrong"`
	// Answers with a feature not PRESENT, by status.
	NotPresent map[string]int64 `json:"not_present"`
	// Calls that failed, by gRPC code.
	Errors map[string]int64 `json:"errors"`
	// Attempts the client made: calls plus retries.
	Attempts int64 `json:"attempts"`
	// The first few wrong answers and errors, for a failure report.
	Examples []string `json:"examples"`
	Seconds  float64  `json:"seconds"`
	RPS      float64  `json:"rps"`
	P50Ms    float64  `json:"p50_ms"`
	P90Ms    float64  `json:"p90_ms"`
	P99Ms    float64  `json:"p99_ms"`
	MaxMs    float64  `json:"max_ms"`
	// Calls answered in each second of the run.
	PerSecond []int64 `json:"per_second"`
}

// attempts counts the client's RPC attempts: grpc-go reports a Begin for each, retries too.
type attempts struct{ n atomic.Int64 }

func (a *attempts) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (a *attempts) HandleRPC(_ context.Context, s stats.RPCStats) {
	if b, ok := s.(*stats.Begin); ok && b.IsClient() {
		a.n.Add(1)
	}
}
func (a *attempts) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (a *attempts) HandleConn(context.Context, stats.ConnStats)                       {}

type row struct {
	entities map[string]*fgv1.Value
	expected map[string]string
}

func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("replicas", flag.ContinueOnError)
	flags.SetOutput(stderr)
	addrs := flags.String("addrs", "", "comma-separated host:port of the replicas")
	service := flags.String("service", "", "feature service")
	entities := flags.String("entities", "", "comma-separated entity key columns of the rows file")
	rowsFile := flags.String("rows", "", "CSV file: entity keys and expected feature values")
	concurrency := flags.Int("concurrency", 16, "concurrent call loops")
	duration := flags.Duration("duration", 10*time.Second, "how long the loops call")
	timeout := flags.Duration("timeout", time.Second, "deadline of each call")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *addrs == "" || *service == "" || *entities == "" || *rowsFile == "" {
		fmt.Fprintln(stderr, "replicas: -addrs, -service, -entities and -rows are required")
		return 2
	}
	rows, err := readRows(*rowsFile, strings.Split(*entities, ","))
	if err != nil {
		fmt.Fprintf(stderr, "replicas: %v\n", err)
		return 2
	}

	counter := &attempts{}
	conn, err := balance.Dial(strings.Split(*addrs, ","),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(counter))
	if err != nil {
		fmt.Fprintf(stderr, "replicas: %v\n", err)
		return 1
	}
	defer conn.Close()
	if err := awaitReady(conn, 10*time.Second); err != nil {
		fmt.Fprintf(stderr, "replicas: %v\n", err)
		return 1
	}
	client := fgv1.NewFeatureServiceClient(conn)
	counter.n.Store(0)

	var (
		mu        sync.Mutex
		report    = Report{NotPresent: map[string]int64{}, Errors: map[string]int64{}}
		latencies []time.Duration
		next      atomic.Int64
		perSecond = make([]atomic.Int64, int(duration.Seconds())+2)
	)
	note := func(example string) {
		if len(report.Examples) < 10 {
			report.Examples = append(report.Examples, example)
		}
	}
	start := time.Now()
	end := start.Add(*duration)
	var wg sync.WaitGroup
	for range *concurrency {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(end) {
				r := rows[int(next.Add(1)-1)%len(rows)]
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				sent := time.Now()
				resp, err := client.GetFeatures(ctx, &fgv1.GetFeaturesRequest{
					FeatureService: *service,
					Entities:       r.entities,
				})
				cancel()
				took := time.Since(sent)
				mine = append(mine, took)
				if s := int(time.Since(start).Seconds()); s < len(perSecond) {
					perSecond[s].Add(1)
				}
				mu.Lock()
				report.Calls++
				if err != nil {
					code := status.Code(err).String()
					report.Errors[code]++
					note(fmt.Sprintf("%v: %v", r.entities, err))
				} else if bad, wrong := check(resp, r.expected); bad != "" {
					if wrong {
						report.Wrong++
					} else {
						report.NotPresent[bad]++
					}
					note(fmt.Sprintf("%v: %s", r.entities, bad))
				} else {
					report.Right++
				}
				mu.Unlock()
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	report.Seconds = time.Since(start).Seconds()
	report.Attempts = counter.n.Load()
	report.RPS = float64(report.Calls) / report.Seconds
	slices.Sort(latencies)
	report.P50Ms = quantile(latencies, 0.50)
	report.P90Ms = quantile(latencies, 0.90)
	report.P99Ms = quantile(latencies, 0.99)
	report.MaxMs = quantile(latencies, 1)
	for i := range int(math.Ceil(report.Seconds)) {
		if i < len(perSecond) {
			report.PerSecond = append(report.PerSecond, perSecond[i].Load())
		}
	}
	out, _ := json.Marshal(report)
	fmt.Fprintln(stdout, string(out))
	return 0
}

// check compares an answer with a row: "" when every feature is PRESENT and equal, else what is
// not and whether a value is wrong (rather than not PRESENT).
func check(resp *fgv1.GetFeaturesResponse, expected map[string]string) (string, bool) {
	names := resp.GetFeatureNames()
	if len(names) != len(expected) {
		return fmt.Sprintf("%d features answered, %d expected", len(names), len(expected)), true
	}
	for i, name := range names {
		st := resp.GetStatuses()[i]
		if st != fgv1.FeatureStatus_FEATURE_STATUS_PRESENT {
			return strings.TrimPrefix(st.String(), "FEATURE_STATUS_"), false
		}
		want, ok := expected[name]
		if !ok {
			return fmt.Sprintf("%s answered, not expected", name), true
		}
		if !equal(resp.GetValues()[i], want) {
			return fmt.Sprintf("%s = %v, expected %s", name, resp.GetValues()[i], want), true
		}
	}
	return "", false
}

func equal(v *fgv1.Value, want string) bool {
	switch k := v.GetKind().(type) {
	case *fgv1.Value_Int64Value:
		w, err := strconv.ParseInt(want, 10, 64)
		return err == nil && w == k.Int64Value
	case *fgv1.Value_DoubleValue:
		w, err := strconv.ParseFloat(want, 64)
		return err == nil && math.Abs(w-k.DoubleValue) <= 1e-12*math.Max(math.Abs(w), 1)
	case *fgv1.Value_StringValue:
		return want == k.StringValue
	case *fgv1.Value_BoolValue:
		w, err := strconv.ParseBool(want)
		return err == nil && w == k.BoolValue
	default:
		return false
	}
}

func readRows(path string, entities []string) ([]row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	records, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(records) < 2 {
		return nil, fmt.Errorf("%s: a header and at least one row are needed", path)
	}
	header := records[0]
	for _, e := range entities {
		if !slices.Contains(header, e) {
			return nil, fmt.Errorf("%s: no column %q (-entities)", path, e)
		}
	}
	rows := make([]row, 0, len(records)-1)
	for _, rec := range records[1:] {
		r := row{entities: map[string]*fgv1.Value{}, expected: map[string]string{}}
		for j, name := range header {
			if slices.Contains(entities, name) {
				r.entities[name] = &fgv1.Value{Kind: &fgv1.Value_StringValue{StringValue: rec[j]}}
			} else {
				r.expected[name] = rec[j]
			}
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000
}

// awaitReady connects conn and waits until a replica is ready, for at most timeout.
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
