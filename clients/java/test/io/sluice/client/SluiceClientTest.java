package io.sluice.client;

import static io.sluice.client.SluiceClient.*;

import io.grpc.Status;
import io.sluice.v1.AppendResponse;
import io.sluice.v1.EventData;
import io.sluice.v1.RecordedEvent;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/** Runs against a real store at SLUICE_STORE_ADDR (tests/clients/test_java.py starts one).
 *  Prints "PASS name" per case; exits 1 on the first failure. */
public final class SluiceClientTest {
  interface Case { void run(SluiceClient c, String stream) throws Exception; }

  static void check(boolean ok, String what) {
    if (!ok) throw new AssertionError(what);
  }

  static byte[] bytes(String s) { return s.getBytes(StandardCharsets.UTF_8); }

  public static void main(String[] args) throws Exception {
    String addr = System.getenv("SLUICE_STORE_ADDR");
    check(addr != null, "SLUICE_STORE_ADDR names the store under test");
    List<Object[]> cases = new ArrayList<>();
    cases.add(new Object[] {"append then read", (Case) (c, s) -> {
      AppendResponse r = c.append(s, noStream(), newEvent("Opened", bytes("{\"owner\":\"ada\"}")), newEvent("Renamed", bytes("x")));
      check(r.getFirstRevision() == 0 && r.getLastRevision() == 1, "revisions " + r);
      List<RecordedEvent> got = c.read(s, fromStart());
      check(got.size() == 2 && got.get(0).getType().equals("Opened"), "read back " + got);
      check(got.get(0).getData().toStringUtf8().equals("{\"owner\":\"ada\"}"), "data");
    }});
    cases.add(new Object[] {"the same ids again are a safe retry", (Case) (c, s) -> {
      EventData ev = newEvent("Paid", bytes("1"));
      AppendResponse first = c.append(s, any(), ev);
      AppendResponse again = c.append(s, any(), ev);
      check(again.getDuplicate() && again.getFirstPosition() == first.getFirstPosition(), "retry " + again);
    }});
    cases.add(new Object[] {"a conflict is a SluiceException with details", (Case) (c, s) -> {
      c.append(s, any(), newEvent("A", new byte[0]));
      try {
        c.append(s, revision(5), newEvent("B", new byte[0]));
        check(false, "no conflict");
      } catch (SluiceException e) {
        check(e.code == Status.Code.FAILED_PRECONDITION, "code " + e.code);
        check(e.reason.equals("WRONG_EXPECTED_REVISION") && "0".equals(e.metadata.get("actual")), "details " + e.metadata);
      }
    }});
    cases.add(new Object[] {"bad input names the field", (Case) (c, s) -> {
      try {
        c.append(s, any(), EventData.newBuilder().setId(uuid7()).build());  // no type
        check(false, "accepted");
      } catch (SluiceException e) {
        check(e.code == Status.Code.INVALID_ARGUMENT && !e.field.isEmpty(), "bad input " + e);
      }
    }});
    cases.add(new Object[] {"subscribe catches up, goes live, resumes", (Case) (c, s) -> {
      c.append(s, any(), newEvent("Old", new byte[0]), newEvent("Old", new byte[0]));
      SluiceClient.Subscription sub = c.subscribe(s, List.of(), fromStart());
      List<String> kinds = new ArrayList<>();
      while (kinds.size() < 3) {
        SluiceClient.Item item = sub.next();
        if (item.caughtUp()) {
          kinds.add("caught_up");
          c.append(s, any(), newEvent("New", new byte[0]));
        } else {
          kinds.add(item.event().getType());
        }
      }
      check(kinds.equals(List.of("Old", "Old", "caught_up")), "order " + kinds);
      check(sub.next().event().getType().equals("New"), "live");
      c.append(s, any(), newEvent("Later", new byte[0]));
      SluiceClient.Subscription resumed = c.subscribe("", List.of(s), fromPosition(sub.cursor));
      check(resumed.next().event().getType().equals("Later"), "resumed");
    }});
    int passed = 0;
    try (SluiceClient c = new SluiceClient(addr)) {
      for (Object[] kase : cases) {
        String name = (String) kase[0];
        ((Case) kase[1]).run(c, "java-" + name.replace(' ', '-') + "-" + System.nanoTime());
        System.out.println("PASS " + name);
        passed++;
      }
    }
    System.out.println("passed " + passed + " of " + cases.size());
    System.exit(passed == cases.size() ? 0 : 1);
  }
}
