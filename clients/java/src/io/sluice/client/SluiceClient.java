package io.sluice.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.Empty;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.sluice.v1.AppendRequest;
import io.sluice.v1.AppendResponse;
import io.sluice.v1.EventData;
import io.sluice.v1.ExpectedRevision;
import io.sluice.v1.Filter;
import io.sluice.v1.ReadRequest;
import io.sluice.v1.ReadResponse;
import io.sluice.v1.RecordedEvent;
import io.sluice.v1.StartPoint;
import io.sluice.v1.StreamsGrpc;
import io.sluice.v1.SubscribeRequest;
import io.sluice.v1.SubscribeResponse;
import java.security.SecureRandom;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** A client for the Sluice event store (sluice.v1) over gRPC. */
public final class SluiceClient implements AutoCloseable {
  private static final SecureRandom RANDOM = new SecureRandom();
  private final ManagedChannel channel;
  public final StreamsGrpc.StreamsBlockingStub streams;

  public SluiceClient(String target) {
    this(ManagedChannelBuilder.forTarget(target).usePlaintext().build());
  }

  public SluiceClient(ManagedChannel channel) {
    this.channel = channel;
    this.streams = StreamsGrpc.newBlockingStub(channel);
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  /** Any revision. */
  public static ExpectedRevision any() {
    return ExpectedRevision.getDefaultInstance();
  }

  /** Only a stream that does not exist yet. */
  public static ExpectedRevision noStream() {
    return ExpectedRevision.newBuilder().setNoStream(Empty.getDefaultInstance()).build();
  }

  /** Only when the stream's last revision is r. */
  public static ExpectedRevision revision(long r) {
    return ExpectedRevision.newBuilder().setRevision(r).build();
  }

  public static StartPoint fromStart() {
    return StartPoint.newBuilder().setStart(Empty.getDefaultInstance()).build();
  }

  public static StartPoint fromPosition(long position) {
    return StartPoint.newBuilder().setPosition(position).build();
  }

  /** An event with a time-ordered (version 7) UUID. */
  public static EventData newEvent(String type, byte[] data) {
    return EventData.newBuilder().setId(uuid7()).setType(type).setData(ByteString.copyFrom(data)).build();
  }

  /** A time-ordered UUID: it keeps the store's id index local. */
  public static String uuid7() {
    byte[] b = new byte[16];
    RANDOM.nextBytes(b);
    long ms = System.currentTimeMillis();
    for (int i = 0; i < 6; i++) b[i] = (byte) (ms >>> (8 * (5 - i)));
    b[6] = (byte) ((b[6] & 0x0f) | 0x70);
    b[8] = (byte) ((b[8] & 0x3f) | 0x80);
    StringBuilder s = new StringBuilder();
    for (int i = 0; i < 16; i++) {
      if (i == 4 || i == 6 || i == 8 || i == 10) s.append('-');
      s.append(String.format("%02x", b[i]));
    }
    return s.toString();
  }

  /** Append events atomically; a refusal is a SluiceException. */
  public AppendResponse append(String stream, ExpectedRevision expected, EventData... events) {
    try {
      return streams.append(AppendRequest.newBuilder()
          .setStream(stream).setExpected(expected).addAllEvents(List.of(events)).build());
    } catch (StatusRuntimeException e) {
      throw SluiceException.from(e);
    }
  }

  /** A stream's events (every stream's with ""), from a start point. */
  public List<RecordedEvent> read(String stream, StartPoint from) {
    List<RecordedEvent> out = new ArrayList<>();
    try {
      Iterator<ReadResponse> it = streams.read(ReadRequest.newBuilder().setStream(stream).setFrom(from).build());
      while (it.hasNext()) out.addAll(it.next().getEventsList());
    } catch (StatusRuntimeException e) {
      throw SluiceException.from(e);
    }
    return out;
  }

  /** One thing a subscription delivers: an event, or that it caught up. */
  public record Item(RecordedEvent event, boolean caughtUp) {}

  /** Follows a stream (or streams with prefixes): catches up, says so, then goes live.
   *  {@code cursor} is the position to resume from after what was delivered. */
  public static final class Subscription {
    private final Iterator<SubscribeResponse> messages;
    private final ArrayDeque<RecordedEvent> pending = new ArrayDeque<>();
    public long cursor;

    Subscription(Iterator<SubscribeResponse> messages) {
      this.messages = messages;
    }

    public Item next() {
      try {
        while (true) {
          RecordedEvent ev = pending.poll();
          if (ev != null) {
            cursor = ev.getPosition() + 1;
            return new Item(ev, false);
          }
          SubscribeResponse msg = messages.next();
          switch (msg.getContentCase()) {
            case EVENTS -> pending.addAll(msg.getEvents().getEventsList());
            case CAUGHT_UP -> {
              cursor = msg.getCaughtUp().getPosition();
              return new Item(null, true);
            }
            case CHECKPOINT -> cursor = msg.getCheckpoint().getPosition();
            default -> { }
          }
        }
      } catch (StatusRuntimeException e) {
        throw SluiceException.from(e);
      }
    }
  }

  public Subscription subscribe(String stream, List<String> prefixes, StartPoint from) {
    SubscribeRequest.Builder req = SubscribeRequest.newBuilder().setStream(stream).setFrom(from);
    if (!prefixes.isEmpty()) req.setFilter(Filter.newBuilder().addAllStreamPrefixes(prefixes));
    return new Subscription(streams.subscribe(req.build()));
  }
}
