package dev.featuregateway.example;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.featuregateway.v1.DescribeFeatureServiceRequest;
import dev.featuregateway.v1.DescribeFeatureServiceResponse;
import dev.featuregateway.v1.EntityRow;
import dev.featuregateway.v1.FeatureDescription;
import dev.featuregateway.v1.FeatureServiceGrpc;
import dev.featuregateway.v1.FeatureStatus;
import dev.featuregateway.v1.FeatureVector;
import dev.featuregateway.v1.GetFeaturesBatchRequest;
import dev.featuregateway.v1.GetFeaturesBatchResponse;
import dev.featuregateway.v1.GetFeaturesRequest;
import dev.featuregateway.v1.GetFeaturesResponse;
import dev.featuregateway.v1.Value;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Tests of the generated Java client against a live gateway running the embedded demo
 * ({@code feature-gateway demo}), whose gRPC address clients/test.sh passes in the environment
 * variable (or system property) FEATURE_GATEWAY_ADDR.
 */
class ClientTest {
  /** The demo's fraud_v1 vector, in its declared output order. */
  static final List<String> FRAUD_V1 =
      List.of(
          "txn:amount", "txn:currency", "txn:channel",
          "user_profile:account_age_days", "user_profile:country", "user_profile:kyc_level",
          "user_profile:email_verified", "user_profile:avg_txn_amount_30d",
          "user_profile:txn_count_7d", "user_profile:chargebacks_365d",
          "card_profile:card_age_days", "card_profile:card_type", "card_profile:issuer_country",
          "card_profile:decline_rate_30d",
          "merchant_profile:mcc", "merchant_profile:country", "merchant_profile:risk_score",
          "merchant_profile:chargeback_rate_90d",
          "mcc_risk:fraud_rate", "mcc_risk:risk_tier");

  // Generous because the test machine is small and shared, and the first call also pays for the
  // connection; the tests check behaviour, never speed.
  static final long DEADLINE_MS = 5000;

  static ManagedChannel channel;
  static FeatureServiceGrpc.FeatureServiceBlockingStub stub;

  @BeforeAll
  static void connect() {
    String addr = System.getProperty("FEATURE_GATEWAY_ADDR", System.getenv("FEATURE_GATEWAY_ADDR"));
    Assumptions.assumeTrue(
        addr != null && !addr.isEmpty(),
        "FEATURE_GATEWAY_ADDR is not set; clients/test.sh starts a gateway and sets it");
    channel = Grpc.newChannelBuilder(addr, InsecureChannelCredentials.create()).build();
    stub = FeatureServiceGrpc.newBlockingStub(channel);
  }

  @AfterAll
  static void disconnect() throws InterruptedException {
    if (channel != null) {
      channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  /** A stub whose next call carries a deadline (grpc-timeout); it counts from now. */
  static FeatureServiceGrpc.FeatureServiceBlockingStub withDeadline() {
    return stub.withDeadlineAfter(DEADLINE_MS, TimeUnit.MILLISECONDS);
  }

  static Value str(String s) {
    return Value.newBuilder().setStringValue(s).build();
  }

  static Map<String, Value> entities(String user, String card, String merchant) {
    return Map.of("user_id", str(user), "card_id", str(card), "merchant_id", str(merchant));
  }

  static Map<String, Value> txnContext(double amount) {
    return Map.of(
        "amount", Value.newBuilder().setDoubleValue(amount).build(),
        "currency", str("USD"),
        "channel", str("ecom"));
  }

  /** The status each feature should have when only the user is unknown (or nothing is). */
  static FeatureStatus expected(String feature, boolean unknownUser) {
    return unknownUser && feature.startsWith("user_profile:")
        ? FeatureStatus.FEATURE_STATUS_NOT_FOUND
        : FeatureStatus.FEATURE_STATUS_PRESENT;
  }

  @Test
  void demoKeysAreAllPresent() {
    GetFeaturesResponse r =
        withDeadline()
            .getFeatures(
                GetFeaturesRequest.newBuilder()
                    .setFeatureService("fraud_v1")
                    .putAllEntities(entities("u_00042", "c_00042", "m_0042"))
                    .putAllContext(txnContext(129.99))
                    .setRequestId("java-client-test-1")
                    .build());
    assertEquals("java-client-test-1", r.getRequestId());
    assertEquals(FRAUD_V1, r.getFeatureNamesList());
    assertEquals(20, r.getValuesCount());
    assertEquals(20, r.getStatusesCount());
    for (int i = 0; i < 20; i++) {
      assertEquals(FeatureStatus.FEATURE_STATUS_PRESENT, r.getStatuses(i), FRAUD_V1.get(i));
    }
    // The request-context features echo what was sent, with their declared types.
    assertEquals(129.99, r.getValues(0).getDoubleValue());
    assertEquals("USD", r.getValues(1).getStringValue());
    // Table features carry a typed value of their declared kind.
    assertEquals(Value.KindCase.INT64_VALUE, r.getValues(3).getKindCase());
    assertEquals(Value.KindCase.BOOL_VALUE, r.getValues(6).getKindCase());
  }

  @Test
  void unknownUserIsNotFound() {
    GetFeaturesResponse r =
        withDeadline()
            .getFeatures(
                GetFeaturesRequest.newBuilder()
                    .setFeatureService("fraud_v1")
                    .putAllEntities(entities("u_unknown", "c_00042", "m_0042"))
                    .putAllContext(txnContext(5))
                    .build());
    assertEquals(FRAUD_V1, r.getFeatureNamesList());
    for (int i = 0; i < 20; i++) {
      assertEquals(expected(FRAUD_V1.get(i), true), r.getStatuses(i), FRAUD_V1.get(i));
    }
  }

  @Test
  void missingCardIsInvalidArgument() {
    StatusRuntimeException e =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                withDeadline()
                    .getFeatures(
                        GetFeaturesRequest.newBuilder()
                            .setFeatureService("fraud_v1")
                            .putEntities("user_id", str("u_00042"))
                            .putEntities("merchant_id", str("m_0042"))
                            .putAllContext(txnContext(5))
                            .build()));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode(), e.toString());
    String message = e.getStatus().getDescription();
    assertTrue(
        message != null && message.contains("entities.card_id"),
        "message does not name entities.card_id: " + message);
  }

  @Test
  void batchOfThreeRowsInOrder() {
    GetFeaturesBatchResponse r =
        withDeadline()
            .getFeaturesBatch(
                GetFeaturesBatchRequest.newBuilder()
                    .setFeatureService("fraud_v1")
                    .addRows(row(entities("u_00001", "c_00001", "m_0001"), 1.5))
                    .addRows(row(entities("u_unknown", "c_00002", "m_0002"), 2.5))
                    .addRows(row(entities("u_00042", "c_00042", "m_0042"), 3.5))
                    .build());
    assertEquals(FRAUD_V1, r.getFeatureNamesList());
    assertEquals(3, r.getRowsCount());
    for (int row = 0; row < 3; row++) {
      FeatureVector v = r.getRows(row);
      assertEquals(20, v.getValuesCount());
      assertEquals(20, v.getStatusesCount());
      // Each row's txn:amount is its own request context: the rows come back in order.
      assertEquals(row + 1.5, v.getValues(0).getDoubleValue(), "row " + row + " txn:amount");
      // Row 1's user is unknown: its user_profile features alone are NOT_FOUND.
      for (int i = 0; i < 20; i++) {
        assertEquals(
            expected(FRAUD_V1.get(i), row == 1), v.getStatuses(i), "row " + row + " " + FRAUD_V1.get(i));
      }
    }
  }

  @Test
  void describeFeatureService() {
    DescribeFeatureServiceResponse r =
        withDeadline()
            .describeFeatureService(
                DescribeFeatureServiceRequest.newBuilder().setName("fraud_v1").build());
    assertEquals(
        FRAUD_V1,
        r.getFeaturesList().stream().map(FeatureDescription::getName).collect(Collectors.toList()));
    assertEquals(30, r.getDeadlineMs());
  }

  @Test
  void examplePrintsTheDemoVector() throws Exception {
    java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
    java.io.ByteArrayOutputStream err = new java.io.ByteArrayOutputStream();
    String addr = System.getProperty("FEATURE_GATEWAY_ADDR", System.getenv("FEATURE_GATEWAY_ADDR"));
    int code =
        Example.run(
            addr,
            "u_00042",
            DEADLINE_MS,
            new java.io.PrintStream(out, true, "UTF-8"),
            new java.io.PrintStream(err, true, "UTF-8"));
    assertEquals(0, code, err.toString("UTF-8"));
    List<String> lines = out.toString("UTF-8").lines().collect(Collectors.toList());
    assertEquals(21, lines.size(), out.toString("UTF-8"));
    assertTrue(lines.get(0).startsWith("request_id "), lines.get(0));
    assertTrue(lines.get(1).startsWith("txn:amount ") && lines.get(1).contains("129.99"), lines.get(1));
    for (String line : lines.subList(1, 21)) {
      assertTrue(line.endsWith(" PRESENT"), line);
    }
  }

  static EntityRow row(Map<String, Value> entities, double amount) {
    return EntityRow.newBuilder().putAllEntities(entities).putAllContext(txnContext(amount)).build();
  }
}
