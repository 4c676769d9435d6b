package dev.featuregateway.example;

import dev.featuregateway.v1.FeatureServiceGrpc;
import dev.featuregateway.v1.GetFeaturesRequest;
import dev.featuregateway.v1.GetFeaturesResponse;
import dev.featuregateway.v1.Value;
import io.grpc.ConnectivityState;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import java.io.PrintStream;
import java.util.concurrent.TimeUnit;

/**
 * Fetches the demo's fraud_v1 feature vector from a running feature-gateway and prints one line
 * per feature: name, value, status.
 *
 * <pre>
 *   cargo run --release -p gateway -- demo        # in another terminal
 *   mvn -q compile exec:java -Dexec.args="127.0.0.1:50051 u_00042"
 * </pre>
 */
public final class Example {
  private Example() {}

  public static void main(String[] args) throws InterruptedException {
    String addr = args.length > 0 ? args[0] : "127.0.0.1:50051";
    String user = args.length > 1 ? args[1] : "u_00042";
    int code = run(addr, user, 200, System.out, System.err);
    if (code != 0) {
      System.exit(code);
    }
  }

  /** main with its arguments and output passed in, so that the tests can run it. */
  static int run(String addr, String user, long deadlineMs, PrintStream out, PrintStream err)
      throws InterruptedException {
    // One channel per process, shared by every call: gRPC multiplexes calls over it.
    ManagedChannel channel =
        Grpc.newChannelBuilder(addr, InsecureChannelCredentials.create()).build();
    try {
      awaitReady(channel, 5, TimeUnit.SECONDS);
      FeatureServiceGrpc.FeatureServiceBlockingStub stub =
          FeatureServiceGrpc.newBlockingStub(channel);
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
        // The deadline travels to the gateway as grpc-timeout: it is how the gateway learns this
        // caller's budget and answers inside it (late features come back TIMED_OUT, not an
        // error). A deadline counts from when it is set, so set it on each call.
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
      return 0;
    } finally {
      channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  /**
   * Connects before the first deadline-bound call. A channel connects lazily, so otherwise the
   * first call pays for name resolution, the TCP and HTTP/2 handshakes and, on a cold JVM, class
   * loading, all inside its deadline (hundreds of milliseconds on a busy machine). A prediction
   * service does this once at start-up.
   */
  static void awaitReady(ManagedChannel channel, long timeout, TimeUnit unit)
      throws InterruptedException {
    long deadline = System.nanoTime() + unit.toNanos(timeout);
    ConnectivityState state;
    while ((state = channel.getState(true)) != ConnectivityState.READY) {
      if (System.nanoTime() > deadline) {
        throw new IllegalStateException("not connected after " + timeout + " " + unit + ": " + state);
      }
      java.util.concurrent.CountDownLatch changed = new java.util.concurrent.CountDownLatch(1);
      channel.notifyWhenStateChanged(state, changed::countDown);
      changed.await(100, TimeUnit.MILLISECONDS);
    }
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
