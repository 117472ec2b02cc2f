package sluice

// Runs against a real store at SLUICE_STORE_ADDR (tests/clients/test_go.py starts one).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sluicev1 "sluice.dev/sluice/v1"
)

func dial(t *testing.T) (*Client, context.Context) {
	t.Helper()
	addr := os.Getenv("SLUICE_STORE_ADDR")
	if addr == "" {
		t.Fatal("SLUICE_STORE_ADDR names the store under test")
	}
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c, ctx
}

func name(t *testing.T) string { return fmt.Sprintf("go-%s-%d", t.Name(), time.Now().UnixNano()) }

func TestAppendThenRead(t *testing.T) {
	c, ctx := dial(t)
	stream := name(t)
	res, err := c.Append(ctx, stream, NoStream(), NewEvent("Opened", []byte(`{"owner":"ada"}`)), NewEvent("Renamed", []byte("x")))
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstRevision != 0 || res.LastRevision != 1 {
		t.Fatalf("revisions %d..%d", res.FirstRevision, res.LastRevision)
	}
	events, err := c.Read(ctx, stream, FromStart())
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Type != "Opened" || string(events[0].Data) != `{"owner":"ada"}` {
		t.Fatalf("read back %v", events)
	}
}

func TestTheSameIDsAgainAreASafeRetry(t *testing.T) {
	c, ctx := dial(t)
	stream := name(t)
	ev := NewEvent("Paid", []byte("1"))
	first, err := c.Append(ctx, stream, Any(), ev)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Append(ctx, stream, Any(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.FirstPosition != first.FirstPosition {
		t.Fatalf("retry: %v after %v", again, first)
	}
}

func TestAConflictIsAnErrorWithDetails(t *testing.T) {
	c, ctx := dial(t)
	stream := name(t)
	if _, err := c.Append(ctx, stream, Any(), NewEvent("A", nil)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Append(ctx, stream, Revision(5), NewEvent("B", nil))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %v", err)
	}
	if e.Code != codes.FailedPrecondition || e.Reason != "WRONG_EXPECTED_REVISION" || e.Metadata["actual"] != "0" {
		t.Fatalf("conflict details: %+v", e)
	}
}

func TestBadInputNamesTheField(t *testing.T) {
	c, ctx := dial(t)
	_, err := c.Append(ctx, name(t), Any(), &sluicev1.EventData{Id: UUID7()}) // no type
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.Field == "" {
		t.Fatalf("bad input: %v", err)
	}
}

func TestSubscribeCatchesUpThenGoesLiveAndResumes(t *testing.T) {
	c, ctx := dial(t)
	stream := name(t)
	if _, err := c.Append(ctx, stream, Any(), NewEvent("Old", nil), NewEvent("Old", nil)); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe(ctx, stream, nil, FromStart())
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for len(kinds) < 3 {
		item, err := sub.Next()
		if err != nil {
			t.Fatal(err)
		}
		if item.CaughtUp {
			kinds = append(kinds, "caught_up")
			if _, err := c.Append(ctx, stream, Any(), NewEvent("New", nil)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		kinds = append(kinds, item.Event.Type)
	}
	if fmt.Sprint(kinds) != "[Old Old caught_up]" {
		t.Fatalf("order: %v", kinds)
	}
	live, err := sub.Next()
	if err != nil || live.Event == nil || live.Event.Type != "New" {
		t.Fatalf("live: %v %v", live, err)
	}
	// Resume from the cursor: only what came after.
	if _, err := c.Append(ctx, stream, Any(), NewEvent("Later", nil)); err != nil {
		t.Fatal(err)
	}
	resumed, err := c.Subscribe(ctx, "", []string{stream}, FromPosition(sub.Cursor))
	if err != nil {
		t.Fatal(err)
	}
	next, err := resumed.Next()
	if err != nil || next.Event == nil || next.Event.Type != "Later" {
		t.Fatalf("resumed: %v %v", next, err)
	}
}
