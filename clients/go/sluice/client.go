// Package sluice is a client for the Sluice event store (sluice.v1) over gRPC.
//
//	c, err := sluice.Dial("127.0.0.1:50051")
//	res, err := c.Append(ctx, "orders-42", sluice.Revision(2), sluice.NewEvent("OrderPlaced", data))
//	var e *sluice.Error
//	if errors.As(err, &e) && e.Reason == "WRONG_EXPECTED_REVISION" { ... e.Metadata["actual"] ... }
package sluice

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	sluicev1 "sluice.dev/sluice/v1"
)

// Client is a connection to a store.
type Client struct {
	conn    *grpc.ClientConn
	Streams sluicev1.StreamsClient
}

// Dial connects to a store (plaintext; pass grpc.WithTransportCredentials for TLS).
func Dial(target string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithInsecure()}
	}
	conn, err := grpc.Dial(target, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, Streams: sluicev1.NewStreamsClient(conn)}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Expected is the revision an append expects its stream to be at.
type Expected struct{ msg *sluicev1.ExpectedRevision }

// Any appends whatever the stream's revision.
func Any() Expected { return Expected{} }

// NoStream appends only to a stream that does not exist yet.
func NoStream() Expected {
	return Expected{&sluicev1.ExpectedRevision{Expected: &sluicev1.ExpectedRevision_NoStream{NoStream: &emptypb.Empty{}}}}
}

// Revision appends only when the stream's last revision is r.
func Revision(r uint64) Expected {
	return Expected{&sluicev1.ExpectedRevision{Expected: &sluicev1.ExpectedRevision_Revision{Revision: r}}}
}

// NewEvent is an event to append, with a time-ordered (version 7) UUID.
func NewEvent(eventType string, data []byte) *sluicev1.EventData {
	return &sluicev1.EventData{Id: UUID7(), Type: eventType, Data: data}
}

// UUID7 is a time-ordered UUID: it keeps the store's id index local.
func UUID7() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(time.Now().UnixMilli()))
	copy(b[0:6], ms[2:8])
	b[6] = (b[6] & 0x0f) | 0x70
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Append appends events to a stream atomically. A refusal is an *Error.
func (c *Client) Append(ctx context.Context, stream string, expected Expected, events ...*sluicev1.EventData) (*sluicev1.AppendResponse, error) {
	res, err := c.Streams.Append(ctx, &sluicev1.AppendRequest{Stream: stream, Expected: expected.msg, Events: events})
	return res, fromStatus(err)
}

// FromStart, FromPosition and FromRevision are where reads and subscriptions begin.
func FromStart() *sluicev1.StartPoint {
	return &sluicev1.StartPoint{Point: &sluicev1.StartPoint_Start{Start: &emptypb.Empty{}}}
}

// FromPosition starts at a global position (a cursor saved before).
func FromPosition(p uint64) *sluicev1.StartPoint {
	return &sluicev1.StartPoint{Point: &sluicev1.StartPoint_Position{Position: p}}
}

// FromRevision starts at a revision of one stream.
func FromRevision(r uint64) *sluicev1.StartPoint {
	return &sluicev1.StartPoint{Point: &sluicev1.StartPoint_Revision{Revision: r}}
}

// Read returns a stream's events (every stream's with stream ""), from a start point.
func (c *Client) Read(ctx context.Context, stream string, from *sluicev1.StartPoint) ([]*sluicev1.RecordedEvent, error) {
	call, err := c.Streams.Read(ctx, &sluicev1.ReadRequest{Stream: stream, From: from})
	if err != nil {
		return nil, fromStatus(err)
	}
	var out []*sluicev1.RecordedEvent
	for {
		msg, err := call.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, fromStatus(err)
		}
		out = append(out, msg.GetEvents()...)
	}
}

// Subscription follows a stream (or streams with prefixes): it catches up, says so, then
// delivers live events. Cursor is the position to resume from after what was delivered.
type Subscription struct {
	call    sluicev1.Streams_SubscribeClient
	pending []*sluicev1.RecordedEvent
	Cursor  uint64
}

// Item is one thing a subscription delivers: an event, or caught-up (CaughtUp true).
type Item struct {
	Event    *sluicev1.RecordedEvent
	CaughtUp bool
}

// Subscribe starts a subscription; cancel ctx to end it.
func (c *Client) Subscribe(ctx context.Context, stream string, prefixes []string, from *sluicev1.StartPoint) (*Subscription, error) {
	req := &sluicev1.SubscribeRequest{Stream: stream, From: from}
	if len(prefixes) > 0 {
		req.Filter = &sluicev1.Filter{StreamPrefixes: prefixes}
	}
	call, err := c.Streams.Subscribe(ctx, req)
	if err != nil {
		return nil, fromStatus(err)
	}
	return &Subscription{call: call}, nil
}

// Next blocks for the next event or caught-up.
func (s *Subscription) Next() (Item, error) {
	for {
		if len(s.pending) > 0 {
			ev := s.pending[0]
			s.pending = s.pending[1:]
			s.Cursor = ev.Position + 1
			return Item{Event: ev}, nil
		}
		msg, err := s.call.Recv()
		if err != nil {
			return Item{}, fromStatus(err)
		}
		switch {
		case msg.GetEvents() != nil:
			s.pending = append(s.pending, msg.GetEvents().GetEvents()...)
		case msg.GetCaughtUp() != nil:
			s.Cursor = msg.GetCaughtUp().GetPosition()
			return Item{CaughtUp: true}, nil
		case msg.GetCheckpoint() != nil:
			s.Cursor = msg.GetCheckpoint().GetPosition()
		}
	}
}
