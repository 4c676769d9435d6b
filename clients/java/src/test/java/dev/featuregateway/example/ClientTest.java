package dev.featuregateway.example;

import static java.nio.charset.StandardCharsets.UTF_8;
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
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
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
    String addr = addr();
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
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    ByteArrayOutputStream err = new ByteArrayOutputStream();
    int code =
        Example.run(
            Example::openChannel,
            addr(),
            List.of("u_00042"),
            DEADLINE_MS,
            new PrintStream(out, true, UTF_8),
            new PrintStream(err, true, UTF_8));
    assertEquals(0, code, err.toString(UTF_8));
    List<String> lines = out.toString(UTF_8).lines().collect(Collectors.toList());
    assertEquals(21, lines.size(), out.toString(UTF_8));
    assertTrue(lines.get(0).startsWith("request_id "), lines.get(0));
    assertTrue(lines.get(1).startsWith("txn:amount ") && lines.get(1).contains("129.99"), lines.get(1));
    for (String line : lines.subList(1, 21)) {
      assertTrue(line.endsWith(" PRESENT"), line);
    }
  }

  /** One call as the example made it: the method, its options and its request. */
  static final class Call {
    final String method;
    final CallOptions options;
    volatile Object request;

    Call(String method, CallOptions options) {
      this.method = method;
      this.options = options;
    }
  }

  /**
   * The example opens one channel for all its calls, makes its warm-up call on it first (a
   * GetFeatures without entity keys, which the gateway refuses before calling any source or
   * logging, with wait-for-ready and a deadline of its own), then one GetFeatures per user on the
   * same channel, each with the caller's deadline: what clients/README.md tells a Java caller to
   * do.
   */
  @Test
  void exampleWarmsUpOnceThenReusesOneChannel() throws Exception {
    List<Call> calls = new CopyOnWriteArrayList<>();
    ClientInterceptor recorder =
        new ClientInterceptor() {
          @Override
          public <Q, R> ClientCall<Q, R> interceptCall(
              MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
            Call call = new Call(method.getBareMethodName(), options);
            calls.add(call);
            return new ForwardingClientCall.SimpleForwardingClientCall<Q, R>(
                next.newCall(method, options)) {
              @Override
              public void sendMessage(Q message) {
                call.request = message;
                super.sendMessage(message);
              }
            };
          }
        };
    AtomicInteger channels = new AtomicInteger();
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    ByteArrayOutputStream err = new ByteArrayOutputStream();
    List<String> users = List.of("u_00042", "u_unknown", "u_00001");
    int code =
        Example.run(
            a -> {
              channels.incrementAndGet();
              return Grpc.newChannelBuilder(a, InsecureChannelCredentials.create())
                  .intercept(recorder)
                  .build();
            },
            addr(),
            users,
            DEADLINE_MS,
            new PrintStream(out, true, UTF_8),
            new PrintStream(err, true, UTF_8));
    assertEquals(0, code, err.toString(UTF_8));
    assertEquals(1, channels.get(), "channels opened");
    assertEquals(
        List.of("GetFeatures", "GetFeatures", "GetFeatures", "GetFeatures"),
        calls.stream().map(c -> c.method).collect(Collectors.toList()));
    Call warmUp = calls.get(0);
    assertTrue(warmUp.options.isWaitForReady(), "the warm-up call waits for the connection");
    assertTrue(warmUp.options.getDeadline() != null, "the warm-up call has a deadline");
    GetFeaturesRequest warmUpRequest = (GetFeaturesRequest) warmUp.request;
    assertEquals("fraud_v1", warmUpRequest.getFeatureService());
    assertEquals(0, warmUpRequest.getEntitiesCount(), "the warm-up request must be refused");
    for (int i = 1; i < calls.size(); i++) {
      Call call = calls.get(i);
      assertTrue(call.options.getDeadline() != null, "GetFeatures without a deadline");
      assertTrue(
          call.options.getDeadline().timeRemaining(TimeUnit.MILLISECONDS) <= DEADLINE_MS,
          "GetFeatures with a deadline beyond the caller's");
      assertTrue(!call.options.isWaitForReady(), "GetFeatures should fail fast, not wait");
      assertEquals(
          users.get(i - 1),
          ((GetFeaturesRequest) call.request).getEntitiesOrThrow("user_id").getStringValue());
    }
    // Each user's vector, in order: u_unknown's user_profile features are NOT_FOUND.
    List<String> lines = out.toString(UTF_8).lines().collect(Collectors.toList());
    assertEquals(63, lines.size(), out.toString(UTF_8));
    for (int user = 0; user < 3; user++) {
      assertTrue(lines.get(21 * user).startsWith("request_id "), lines.get(21 * user));
      for (int i = 0; i < 20; i++) {
        String line = lines.get(21 * user + 1 + i);
        String status =
            expected(FRAUD_V1.get(i), user == 1).name().replaceFirst("^FEATURE_STATUS_", "");
        assertTrue(line.startsWith(FRAUD_V1.get(i) + " ") && line.endsWith(" " + status), line);
      }
    }
  }

  static String addr() {
    return System.getProperty("FEATURE_GATEWAY_ADDR", System.getenv("FEATURE_GATEWAY_ADDR"));
  }

  static EntityRow row(Map<String, Value> entities, double amount) {
    return EntityRow.newBuilder().putAllEntities(entities).putAllContext(txnContext(amount)).build();
  }
}
