// Tests of the generated Go client against a live gateway running the embedded demo
// (`feature-gateway demo`), whose gRPC address clients/test.sh passes in FEATURE_GATEWAY_ADDR.
package client_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	fgv1 "github.com/feature-gateway/feature-gateway/clients/go/featuregatewayv1"
)

// The demo's fraud_v1 vector, in its declared output order.
var fraudV1 = []string{
	"txn:amount", "txn:currency", "txn:channel",
	"user_profile:account_age_days", "user_profile:country", "user_profile:kyc_level",
	"user_profile:email_verified", "user_profile:avg_txn_amount_30d", "user_profile:txn_count_7d",
	"user_profile:chargebacks_365d",
	"card_profile:card_age_days", "card_profile:card_type", "card_profile:issuer_country",
	"card_profile:decline_rate_30d",
	"merchant_profile:mcc", "merchant_profile:country", "merchant_profile:risk_score",
	"merchant_profile:chargeback_rate_90d",
	"mcc_risk:fraud_rate", "mcc_risk:risk_tier",
}

// The deadline of each call. Generous because the test machine is small and shared, and the
// first call also pays for the connection; the tests check behaviour, never speed.
const callTimeout = 5 * time.Second

func client(t *testing.T) fgv1.FeatureServiceClient {
	t.Helper()
	addr := os.Getenv("FEATURE_GATEWAY_ADDR")
	if addr == "" {
		t.Skip("FEATURE_GATEWAY_ADDR is not set; clients/test.sh starts a gateway and sets it")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return fgv1.NewFeatureServiceClient(conn)
}

func str(s string) *fgv1.Value  { return &fgv1.Value{Kind: &fgv1.Value_StringValue{StringValue: s}} }
func dbl(f float64) *fgv1.Value { return &fgv1.Value{Kind: &fgv1.Value_DoubleValue{DoubleValue: f}} }

func entities(user, card, merchant string) map[string]*fgv1.Value {
	return map[string]*fgv1.Value{"user_id": str(user), "card_id": str(card), "merchant_id": str(merchant)}
}

func txnContext(amount float64) map[string]*fgv1.Value {
	return map[string]*fgv1.Value{"amount": dbl(amount), "currency": str("USD"), "channel": str("ecom")}
}

func withDeadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestGetFeaturesDemoKeysAllPresent(t *testing.T) {
	c := client(t)
	resp, err := c.GetFeatures(withDeadline(t), &fgv1.GetFeaturesRequest{
		FeatureService: "fraud_v1",
		Entities:       entities("u_00042", "c_00042", "m_0042"),
		Context:        txnContext(129.99),
		RequestId:      "go-client-test-1",
	})
	if err != nil {
		t.Fatalf("GetFeatures: %v", err)
	}
	if resp.GetRequestId() != "go-client-test-1" {
		t.Errorf("request_id = %q, want the caller's go-client-test-1", resp.GetRequestId())
	}
	assertNames(t, resp.GetFeatureNames())
	if len(resp.GetValues()) != 20 || len(resp.GetStatuses()) != 20 {
		t.Fatalf("got %d values and %d statuses, want 20 each", len(resp.GetValues()), len(resp.GetStatuses()))
	}
	for i, st := range resp.GetStatuses() {
		if st != fgv1.FeatureStatus_FEATURE_STATUS_PRESENT {
			t.Errorf("%s: status %v, want PRESENT", fraudV1[i], st)
		}
	}
	// The request-context features echo what was sent, with their declared types.
	if got := resp.GetValues()[0].GetDoubleValue(); got != 129.99 {
		t.Errorf("txn:amount = %v, want 129.99", got)
	}
	if got := resp.GetValues()[1].GetStringValue(); got != "USD" {
		t.Errorf("txn:currency = %q, want USD", got)
	}
	// Table features carry a typed value of their declared kind.
	if _, ok := resp.GetValues()[3].GetKind().(*fgv1.Value_Int64Value); !ok {
		t.Errorf("user_profile:account_age_days = %v, want an int64", resp.GetValues()[3])
	}
	if _, ok := resp.GetValues()[6].GetKind().(*fgv1.Value_BoolValue); !ok {
		t.Errorf("user_profile:email_verified = %v, want a bool", resp.GetValues()[6])
	}
}

func TestGetFeaturesUnknownUserIsNotFound(t *testing.T) {
	c := client(t)
	resp, err := c.GetFeatures(withDeadline(t), &fgv1.GetFeaturesRequest{
		FeatureService: "fraud_v1",
		Entities:       entities("u_unknown", "c_00042", "m_0042"),
		Context:        txnContext(5),
	})
	if err != nil {
		t.Fatalf("GetFeatures: %v (a missing row is a status, not an error)", err)
	}
	assertNames(t, resp.GetFeatureNames())
	for i, st := range resp.GetStatuses() {
		want := fgv1.FeatureStatus_FEATURE_STATUS_PRESENT
		if strings.HasPrefix(fraudV1[i], "user_profile:") {
			want = fgv1.FeatureStatus_FEATURE_STATUS_NOT_FOUND
		}
		if st != want {
			t.Errorf("%s: status %v, want %v", fraudV1[i], st, want)
		}
	}
}

func TestGetFeaturesMissingCardIsInvalidArgument(t *testing.T) {
	c := client(t)
	ents := entities("u_00042", "c_00042", "m_0042")
	delete(ents, "card_id")
	_, err := c.GetFeatures(withDeadline(t), &fgv1.GetFeaturesRequest{
		FeatureService: "fraud_v1",
		Entities:       ents,
		Context:        txnContext(5),
	})
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code = %v (%v), want InvalidArgument", st.Code(), err)
	}
	if !strings.Contains(st.Message(), "entities.card_id") {
		t.Errorf("message %q does not name entities.card_id", st.Message())
	}
}

func TestGetFeaturesBatchThreeRowsInOrder(t *testing.T) {
	c := client(t)
	rows := []*fgv1.EntityRow{
		{Entities: entities("u_00001", "c_00001", "m_0001"), Context: txnContext(1.5)},
		{Entities: entities("u_unknown", "c_00002", "m_0002"), Context: txnContext(2.5)},
		{Entities: entities("u_00042", "c_00042", "m_0042"), Context: txnContext(3.5)},
	}
	resp, err := c.GetFeaturesBatch(withDeadline(t), &fgv1.GetFeaturesBatchRequest{
		FeatureService: "fraud_v1",
		Rows:           rows,
	})
	if err != nil {
		t.Fatalf("GetFeaturesBatch: %v", err)
	}
	assertNames(t, resp.GetFeatureNames())
	if len(resp.GetRows()) != 3 {
		t.Fatalf("got %d rows, want 3", len(resp.GetRows()))
	}
	for r, row := range resp.GetRows() {
		if len(row.GetValues()) != 20 || len(row.GetStatuses()) != 20 {
			t.Fatalf("row %d: %d values, %d statuses, want 20 each", r, len(row.GetValues()), len(row.GetStatuses()))
		}
		// Each row's txn:amount is its own request context: the rows come back in order.
		if got, want := row.GetValues()[0].GetDoubleValue(), float64(r)+1.5; got != want {
			t.Errorf("row %d: txn:amount = %v, want %v", r, got, want)
		}
		// Row 1's user is unknown: its user_profile features alone are NOT_FOUND.
		for i, st := range row.GetStatuses() {
			want := fgv1.FeatureStatus_FEATURE_STATUS_PRESENT
			if r == 1 && strings.HasPrefix(fraudV1[i], "user_profile:") {
				want = fgv1.FeatureStatus_FEATURE_STATUS_NOT_FOUND
			}
			if st != want {
				t.Errorf("row %d %s: status %v, want %v", r, fraudV1[i], st, want)
			}
		}
	}
}

func TestDescribeFeatureService(t *testing.T) {
	c := client(t)
	resp, err := c.DescribeFeatureService(withDeadline(t), &fgv1.DescribeFeatureServiceRequest{Name: "fraud_v1"})
	if err != nil {
		t.Fatalf("DescribeFeatureService: %v", err)
	}
	names := make([]string, 0, len(resp.GetFeatures()))
	for _, f := range resp.GetFeatures() {
		names = append(names, f.GetName())
	}
	assertNames(t, names)
	if resp.GetDeadlineMs() != 30 {
		t.Errorf("deadline_ms = %d, want the demo's 30", resp.GetDeadlineMs())
	}
}

func assertNames(t *testing.T, got []string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(fraudV1, ",") {
		t.Fatalf("feature names =\n  %v\nwant\n  %v", got, fraudV1)
	}
}
