package dev.featuregateway.example;

import dev.featuregateway.v1.FeatureServiceGrpc;
import dev.featuregateway.v1.GetFeaturesRequest;
import dev.featuregateway.v1.GetFeaturesResponse;
import dev.featuregateway.v1.Value;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.PrintStream;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * Fetches the demo's fraud_v1 feature vector of each user given from a running feature-gateway
 * and prints, per user, its request id and one line per feature: name, value, status.
 *
 * <p>It does what a prediction service does: at start-up it opens one channel and makes one
 * warm-up call on it; then every request reuses that channel and stub, each call with its own
 * deadline.
 *
 * <pre>
 *   cargo run --release -p feature-gateway -- demo        # in another terminal
 *   mvn -q compile exec:java -Dexec.args="127.0.0.1:50051 u_00042 u_00001"
 * </pre>
 */
public final class Example {
  private Example() {}

  public static void main(String[] args) throws InterruptedException {
    String addr = args.length > 0 ? args[0] : "127.0.0.1:50051";
    List<String> users =
        args.length > 1 ? List.of(args).subList(1, args.length) : List.of("u_00042");
    int code = run(Example::openChannel, addr, users, 50, System.out, System.err);
    if (code != 0) {
      System.exit(code);
    }
  }

  /** The channel to the gateway at addr: plaintext, as the demo serves. */
  static ManagedChannel openChannel(String addr) {
    return Grpc.newChannelBuilder(addr, InsecureChannelCredentials.create()).build();
  }

  /**
   * main with the channel factory, its arguments and output passed in, so that the tests can run
   * it and watch its calls.
   */
  static int run(
      Function<String, ManagedChannel> openChannel,
      String addr,
      List<String> users,
      long deadlineMs,
      PrintStream out,
      PrintStream err)
      throws InterruptedException {
    // One channel per process, shared by every call: gRPC multiplexes calls over it. A new
    // channel per request would pay for the connection every time.
    ManagedChannel channel = openChannel.apply(addr);
    try {
      FeatureServiceGrpc.FeatureServiceBlockingStub stub =
          FeatureServiceGrpc.newBlockingStub(channel);
      try {
        warmUp(stub, "fraud_v1");
      } catch (StatusRuntimeException e) {
        err.println("warm-up: " + e.getStatus());
        return 1;
      }
      for (String user : users) {
        GetFeaturesRequest request =
            GetFeaturesRequest.newBuilder()
                .setFeatureService("fraud_v1")
                .putEntities("user_id", str(user))
                .putEntities("card_id", str("c_00042"))
                .putEntities("merchant_id", str("m_0042"))
                .putContext("amount", Value.newBuilder().setDoubleValue(129.99).build())
                .putContext("currency", str("USD"))
                .putContext("channel", str("ecom"))
                .build();
        GetFeaturesResponse response;
        try {
          // The deadline travels to the gateway as grpc-timeout: it is how the gateway learns
          // this caller's budget and answers inside it (late features come back TIMED_OUT, not
          // an error). A deadline counts from when it is set, so set it on each call.
          response =
              stub.withDeadlineAfter(deadlineMs, TimeUnit.MILLISECONDS).getFeatures(request);
        } catch (StatusRuntimeException e) {
          // A bad request is the only error; its status description names the offending field.
          err.println("GetFeatures: " + e.getStatus());
          return 1;
        }
        out.println("request_id " + response.getRequestId());
        for (int i = 0; i < response.getFeatureNamesCount(); i++) {
          out.printf(
              "%-36s %-24s %s%n",
              response.getFeatureNames(i),
              format(response.getValues(i)),
              response.getStatuses(i).name().replaceFirst("^FEATURE_STATUS_", ""));
        }
      }
      return 0;
    } finally {
      channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  /**
   * The warm-up call, made once at start-up before the first call with a real deadline. A
   * channel connects lazily, and in a new JVM the first call also loads and compiles the classes
   * of gRPC, Netty and protobuf, the first GetFeaturesRequest built included: without a warm-up,
   * the first GetFeatures pays for all of it and misses a 50 ms deadline. The warm-up request has
   * no entity keys, so the gateway refuses it with INVALID_ARGUMENT before it calls any source or
   * writes anything to the training log. Wait-for-ready makes it wait for the connection (up to
   * its deadline) instead of failing at once while the gateway is still starting. Any other
   * answer (e.g. NOT_FOUND: no such feature service, or no connection in 10 s) is thrown.
   */
  static void warmUp(FeatureServiceGrpc.FeatureServiceBlockingStub stub, String featureService) {
    try {
      stub.withWaitForReady()
          .withDeadlineAfter(10, TimeUnit.SECONDS)
          .getFeatures(GetFeaturesRequest.newBuilder().setFeatureService(featureService).build());
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() != Status.Code.INVALID_ARGUMENT) {
        throw e;
      }
      return;
    }
    throw new IllegalStateException("the warm-up request without entity keys was served");
  }

  static Value str(String s) {
    return Value.newBuilder().setStringValue(s).build();
  }

  /** Renders a Value's oneof for humans; an unset kind means null (see the feature's status). */
  static String format(Value v) {
    switch (v.getKindCase()) {
      case INT64_VALUE:
        return Long.toString(v.getInt64Value());
      case DOUBLE_VALUE:
        return Double.toString(v.getDoubleValue());
      case STRING_VALUE:
        return '"' + v.getStringValue() + '"';
      case BOOL_VALUE:
        return Boolean.toString(v.getBoolValue());
      case BYTES_VALUE:
        return "0x" + java.util.HexFormat.of().formatHex(v.getBytesValue().toByteArray());
      case TIMESTAMP_VALUE:
        return java.time.Instant.ofEpochSecond(
                v.getTimestampValue().getSeconds(), v.getTimestampValue().getNanos())
            .toString();
      case INT64_LIST_VALUE:
        return v.getInt64ListValue().getValuesList().toString();
      case DOUBLE_LIST_VALUE:
        return v.getDoubleListValue().getValuesList().toString();
      case STRING_LIST_VALUE:
        return v.getStringListValue().getValuesList().toString();
      default:
        return "null";
    }
  }
}
