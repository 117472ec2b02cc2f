package io.sluice.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.QuotaFailure;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.util.HashMap;
import java.util.Map;

/** A refusal from the store: its gRPC code, the ErrorInfo reason and metadata, the
 *  field a BadRequest names and the limit a QuotaFailure names. */
public final class SluiceException extends RuntimeException {
  private static final Metadata.Key<byte[]> DETAILS =
      Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER);

  public final Status.Code code;
  public final String reason;
  public final Map<String, String> metadata;
  public final String field;
  public final String limit;

  private SluiceException(Status.Code code, String message, String reason,
      Map<String, String> metadata, String field, String limit, Throwable cause) {
    super(message + (reason.isEmpty() ? "" : " (" + reason + ")"), cause);
    this.code = code;
    this.reason = reason;
    this.metadata = metadata;
    this.field = field;
    this.limit = limit;
  }

  /** The typed refusal for a failed call, from the status details it carries. */
  public static SluiceException from(StatusRuntimeException e) {
    String reason = "";
    String field = "";
    String limit = "";
    Map<String, String> metadata = new HashMap<>();
    Metadata trailers = e.getTrailers();
    byte[] raw = trailers == null ? null : trailers.get(DETAILS);
    if (raw != null) {
      try {
        com.google.rpc.Status st = com.google.rpc.Status.parseFrom(raw);
        for (Any d : st.getDetailsList()) {
          if (d.is(ErrorInfo.class)) {
            ErrorInfo info = d.unpack(ErrorInfo.class);
            reason = info.getReason();
            metadata.putAll(info.getMetadataMap());
          } else if (d.is(BadRequest.class)) {
            BadRequest bad = d.unpack(BadRequest.class);
            if (bad.getFieldViolationsCount() > 0) field = bad.getFieldViolations(0).getField();
          } else if (d.is(QuotaFailure.class)) {
            QuotaFailure q = d.unpack(QuotaFailure.class);
            if (q.getViolationsCount() > 0) limit = q.getViolations(0).getSubject();
          }
        }
      } catch (InvalidProtocolBufferException ignored) {
        // not a google.rpc.Status: the code and message still say what happened
      }
    }
    Status status = e.getStatus();
    String message = status.getDescription() == null ? status.getCode().name() : status.getDescription();
    return new SluiceException(status.getCode(), message, reason, metadata, field, limit, e);
  }
}
