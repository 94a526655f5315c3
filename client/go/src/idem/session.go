package idem

// The client's side of idem.v1.Idempotency/Session (docs/api.md#sessions):
// one stream shared by every goroutine using a Client. A writer goroutine
// takes every operation queued at that moment into one message, so calls
// made at the same time share messages; a reader goroutine routes answers
// back by id. When the stream ends, the calls still waiting fail with
// UNAVAILABLE, like a lost unary reply, and the retries use a new stream. A
// server without Session (UNIMPLEMENTED) turns the session off for good.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	idemv1 "idem/v1"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Operations share a message up to about this many bytes.
const sessionMessageBytes = 1 << 20

type sessionAnswer struct {
	result *idemv1.SessionResult
	err    error
}

type sessionStream struct {
	cancel  context.CancelFunc
	stream  idemv1.Idempotency_SessionClient
	sendq   chan *idemv1.SessionOp
	done    chan struct{}
	mu      sync.Mutex
	waiters map[uint64]chan sessionAnswer
	ended   bool
}

type sessionMux struct {
	stub        idemv1.IdempotencyClient
	nextID      uint64 // atomic
	unsupported int32  // atomic: 1 once the server said UNIMPLEMENTED
	mu          sync.Mutex
	stream      *sessionStream
}

func (m *sessionMux) supported() bool { return atomic.LoadInt32(&m.unsupported) == 0 }

func (m *sessionMux) current() (*sessionStream, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stream != nil && !m.stream.isEnded() {
		return m.stream, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := m.stub.Session(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &sessionStream{cancel: cancel, stream: stream,
		sendq: make(chan *idemv1.SessionOp, 1024), done: make(chan struct{}),
		waiters: map[uint64]chan sessionAnswer{}}
	go s.write()
	go s.read(m)
	m.stream = s
	return s, nil
}

func (s *sessionStream) isEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

func (s *sessionStream) write() {
	for {
		var op *idemv1.SessionOp
		select {
		case op = <-s.sendq:
		case <-s.done:
			return
		}
		msg := &idemv1.SessionRequest{Ops: []*idemv1.SessionOp{op}}
		size := proto.Size(op)
	drain: // Everything queued meanwhile goes in the same message.
		for size < sessionMessageBytes {
			select {
			case more := <-s.sendq:
				msg.Ops = append(msg.Ops, more)
				size += proto.Size(more)
			default:
				break drain
			}
		}
		if err := s.stream.Send(msg); err != nil {
			return // The reader sees the end and fails the waiters.
		}
	}
}

func (s *sessionStream) read(m *sessionMux) {
	var end error
	for {
		resp, err := s.stream.Recv()
		if err != nil {
			end = err
			break
		}
		for _, r := range resp.GetResults() {
			s.mu.Lock()
			ch, ok := s.waiters[r.GetId()]
			delete(s.waiters, r.GetId())
			s.mu.Unlock()
			if !ok {
				continue // Abandoned.
			}
			if c := r.GetStatus().GetCode(); c != 0 {
				ch <- sessionAnswer{err: status.Error(codes.Code(c), r.GetStatus().GetMessage())}
			} else {
				ch <- sessionAnswer{result: r}
			}
		}
	}
	code := status.Code(end)
	if code == codes.Unimplemented {
		atomic.StoreInt32(&m.unsupported, 1)
	}
	switch code {
	case codes.Unimplemented, codes.Unauthenticated, codes.PermissionDenied:
		end = status.Error(code, status.Convert(end).Message())
	default:
		end = status.Errorf(codes.Unavailable,
			"the session stream ended before the answer came (%v); retry", end)
	}
	s.mu.Lock()
	s.ended = true
	waiters := s.waiters
	s.waiters = nil
	s.mu.Unlock()
	close(s.done)
	s.cancel()
	for _, ch := range waiters {
		ch <- sessionAnswer{err: end}
	}
}

// call sends op and waits for its answer within ctx's deadline.
// UNIMPLEMENTED (and supported() false): use the unary RPC.
func (m *sessionMux) call(ctx context.Context, op *idemv1.SessionOp) (*idemv1.SessionResult, error) {
	if !m.supported() {
		return nil, status.Error(codes.Unimplemented, "the server has no Session RPC")
	}
	s, err := m.current()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "opening a session: %v", err)
	}
	op.Id = atomic.AddUint64(&m.nextID, 1)
	if deadline, ok := ctx.Deadline(); ok {
		timeout := time.Until(deadline)
		if timeout <= 0 {
			return nil, status.Error(codes.DeadlineExceeded, "the deadline passed before the call was sent")
		}
		op.Timeout = durationpb.New(timeout.Truncate(time.Millisecond) + time.Millisecond)
	}
	ch := make(chan sessionAnswer, 1)
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, status.Error(codes.Unavailable, "the session stream ended; retry")
	}
	s.waiters[op.Id] = ch
	s.mu.Unlock()
	abandon := func() {
		s.mu.Lock()
		if s.waiters != nil {
			delete(s.waiters, op.Id)
		}
		s.mu.Unlock()
	}
	select {
	case s.sendq <- op:
	case a := <-ch: // The stream ended before the op was queued.
		return a.result, a.err
	case <-ctx.Done():
		abandon()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	select {
	case a := <-ch:
		return a.result, a.err
	case <-ctx.Done():
		abandon()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (m *sessionMux) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stream != nil {
		m.stream.cancel()
	}
}
