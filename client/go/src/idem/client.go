// Package idem is a small Go client of Idem, the idempotency-key service,
// over the stubs generated from proto/idem/v1 (package idem/v1).
//
//	c, err := idem.Dial("127.0.0.1:50051")
//	res, err := c.Run(ctx, "orders", key, idem.Fingerprint(body), work)
//
// Run is the whole protocol: Begin (waiting for an attempt in progress), the
// work with a heartbeat that extends the lease, then Complete with the
// work's result, or Release when the work fails. A retry of the same key
// gets the stored result back (Result.Replayed) without running the work.
package idem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	idemv1 "idem/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Outcomes of Begin.
const (
	Acquired   = "ACQUIRED"
	Completed  = "COMPLETED"
	InProgress = "IN_PROGRESS"
	Mismatch   = "MISMATCH"
)

var (
	// ErrMismatch: the key was already used with a different request.
	ErrMismatch = errors.New("idempotency key already used with a different request")
	// ErrInProgress: another attempt holds the key and the wait ran out.
	ErrInProgress = errors.New("idempotency key is in progress in another attempt")
	// ErrLeaseLost: this attempt no longer holds the key (do not complete).
	ErrLeaseLost = errors.New("lease lost")
)

// Result is what the work produced.
type Result struct {
	Code     int32
	Body     []byte
	Metadata map[string]string
	// Replayed is true when the result came from the store (a retry).
	Replayed bool
}

// Begun is the answer of Begin.
type Begun struct {
	Outcome        string
	Token          uint64
	LeaseExpiresAt time.Time
	Result         *Result // Completed only.
	Attempt        uint32
}

// Client calls one Idem server. Calls that fail with UNAVAILABLE or
// DEADLINE_EXCEEDED are retried (12 attempts, backoff 100 ms to 2 s with equal
// jitter); Begin retries reuse one owner.
//
// Calls go over one Session stream shared by every goroutine using the
// Client (calls made at the same time share messages), falling back to unary
// RPCs against a server without Session. A call whose stream breaks is
// retried like a lost unary reply.
type Client struct {
	conn    *grpc.ClientConn
	stub    idemv1.IdempotencyClient
	session *sessionMux
	Timeout time.Duration // Of one attempt (a Begin's wait is added).
	// Unary: one unary RPC per call instead of the Session stream.
	Unary bool
}

// Dial connects in plaintext; pass grpc.WithTransportCredentials(...) in
// opts for TLS.
func Dial(target string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithInsecure()}
	}
	// Reconnect within 2 s of a server restart (gRPC's default waits up to
	// 2 minutes); an option the caller passes comes later and wins.
	opts = append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6,
			Jitter: 0.2, MaxDelay: 2 * time.Second},
		MinConnectTimeout: 5 * time.Second})}, opts...)
	conn, err := grpc.Dial(target, opts...)
	if err != nil {
		return nil, err
	}
	stub := idemv1.NewIdempotencyClient(conn)
	return &Client{conn: conn, stub: stub, session: &sessionMux{stub: stub},
		Timeout: 5 * time.Second}, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	c.session.close()
	return c.conn.Close()
}

// viaSession sends op over the session stream. ok is false when the caller
// must make the unary call instead (Unary set, or a server without Session).
func (c *Client) viaSession(ctx context.Context, op *idemv1.SessionOp) (res *idemv1.SessionResult, err error, ok bool) {
	if c.Unary || !c.session.supported() {
		return nil, nil, false
	}
	res, err = c.session.call(ctx, op)
	if status.Code(err) == codes.Unimplemented && !c.session.supported() {
		return nil, nil, false
	}
	return res, err, true
}

func retried(err error) bool {
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

func (c *Client) call(ctx context.Context, extra time.Duration, fn func(context.Context) error) error {
	// 12 attempts, 100 ms doubling to 2 s, each pause between half and all
	// of that: at least 7.5 s in all, so a restart of seconds is ridden out.
	const attempts = 12
	backoff := 100 * time.Millisecond
	var err error
	for attempt := 1; attempt <= attempts; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, c.Timeout+extra)
		err = fn(callCtx)
		cancel()
		if err == nil || !retried(err) || attempt == attempts {
			break
		}
		jitter, _ := rand.Int(rand.Reader, big.NewInt(int64(backoff/2)+1))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff/2 + time.Duration(jitter.Int64())):
		}
		if backoff *= 2; backoff > 2*time.Second {
			backoff = 2 * time.Second
		}
	}
	if status.Code(err) == codes.FailedPrecondition {
		return fmt.Errorf("%w: %v", ErrLeaseLost, err)
	}
	return err
}

func newOwner() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // No safe fallback for an id that must not collide.
	}
	return hex.EncodeToString(b)
}

// BeginOptions are the optional parts of Begin.
type BeginOptions struct {
	Lease, Retention, Wait time.Duration
	Owner                  string
}

// Begin begins the key with the request fingerprint.
func (c *Client) Begin(ctx context.Context, ns, key string, fingerprint []byte, o BeginOptions) (*Begun, error) {
	req := &idemv1.BeginRequest{Namespace: ns, Key: key, Fingerprint: fingerprint, Owner: o.Owner}
	if req.Owner == "" {
		req.Owner = newOwner()
	}
	if o.Lease > 0 {
		req.Lease = durationpb.New(o.Lease)
	}
	if o.Retention > 0 {
		req.Retention = durationpb.New(o.Retention)
	}
	if o.Wait > 0 {
		req.Wait = durationpb.New(o.Wait)
	}
	var resp *idemv1.BeginResponse
	err := c.call(ctx, o.Wait, func(ctx context.Context) (err error) {
		op := &idemv1.SessionOp{Op: &idemv1.SessionOp_Begin{Begin: req}}
		if res, err, ok := c.viaSession(ctx, op); ok {
			resp = res.GetBegin()
			return err
		}
		resp, err = c.stub.Begin(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	b := &Begun{Token: resp.GetLease().GetToken(), Attempt: resp.GetAttempt()}
	if t := resp.GetLease().GetExpiresAt(); t != nil {
		b.LeaseExpiresAt = t.AsTime()
	}
	switch resp.GetOutcome() {
	case idemv1.BeginResponse_OUTCOME_ACQUIRED:
		b.Outcome = Acquired
	case idemv1.BeginResponse_OUTCOME_COMPLETED:
		b.Outcome = Completed
		r := resp.GetResult()
		b.Result = &Result{Code: r.GetCode(), Body: r.GetBody(), Metadata: r.GetMetadata(), Replayed: true}
	case idemv1.BeginResponse_OUTCOME_IN_PROGRESS:
		b.Outcome = InProgress
	case idemv1.BeginResponse_OUTCOME_MISMATCH:
		b.Outcome = Mismatch
	default:
		return nil, fmt.Errorf("unknown Begin outcome %v", resp.GetOutcome())
	}
	return b, nil
}

// Complete stores the result under the token.
func (c *Client) Complete(ctx context.Context, ns, key string, token uint64, r Result) error {
	req := &idemv1.CompleteRequest{Namespace: ns, Key: key, Token: token,
		Result: &idemv1.Result{Code: r.Code, Body: r.Body, Metadata: r.Metadata}}
	return c.call(ctx, 0, func(ctx context.Context) error {
		op := &idemv1.SessionOp{Op: &idemv1.SessionOp_Complete{Complete: req}}
		if _, err, ok := c.viaSession(ctx, op); ok {
			return err
		}
		_, err := c.stub.Complete(ctx, req)
		return err
	})
}

// Release gives the key up, so that a retry runs again.
func (c *Client) Release(ctx context.Context, ns, key string, token uint64) error {
	req := &idemv1.ReleaseRequest{Namespace: ns, Key: key, Token: token}
	return c.call(ctx, 0, func(ctx context.Context) error {
		op := &idemv1.SessionOp{Op: &idemv1.SessionOp_Release{Release: req}}
		if _, err, ok := c.viaSession(ctx, op); ok {
			return err
		}
		_, err := c.stub.Release(ctx, req)
		return err
	})
}

// Extend renews the lease for another `lease`.
func (c *Client) Extend(ctx context.Context, ns, key string, token uint64, lease time.Duration) error {
	req := &idemv1.ExtendRequest{Namespace: ns, Key: key, Token: token, Lease: durationpb.New(lease)}
	return c.call(ctx, 0, func(ctx context.Context) error {
		op := &idemv1.SessionOp{Op: &idemv1.SessionOp_Extend{Extend: req}}
		if _, err, ok := c.viaSession(ctx, op); ok {
			return err
		}
		_, err := c.stub.Extend(ctx, req)
		return err
	})
}

// Lookup reads the key: its state and, once completed, the result.
func (c *Client) Lookup(ctx context.Context, ns, key string) (string, *Result, error) {
	var resp *idemv1.LookupResponse
	req := &idemv1.LookupRequest{Namespace: ns, Key: key}
	err := c.call(ctx, 0, func(ctx context.Context) (err error) {
		op := &idemv1.SessionOp{Op: &idemv1.SessionOp_Lookup{Lookup: req}}
		if res, err, ok := c.viaSession(ctx, op); ok {
			resp = res.GetLookup()
			return err
		}
		resp, err = c.stub.Lookup(ctx, req)
		return err
	})
	if err != nil {
		return "", nil, err
	}
	switch resp.GetState() {
	case idemv1.LookupResponse_STATE_COMPLETED:
		r := resp.GetResult()
		return Completed, &Result{Code: r.GetCode(), Body: r.GetBody(), Metadata: r.GetMetadata(), Replayed: true}, nil
	case idemv1.LookupResponse_STATE_IN_PROGRESS:
		return InProgress, nil, nil
	default:
		return "ABSENT", nil, nil
	}
}

// RunOptions shape Run; zero values mean a 30 s lease and a 30 s wait.
type RunOptions struct {
	Lease, Wait, Retention time.Duration
}

// Run runs work at most once per key and returns its result, or the stored
// result of an earlier attempt. The work gets the fencing token. If work
// fails, the key is released and its error returned.
func (c *Client) Run(ctx context.Context, ns, key string, fingerprint []byte, o RunOptions,
	work func(ctx context.Context, token uint64) (Result, error)) (Result, error) {
	if o.Lease == 0 {
		o.Lease = 30 * time.Second
	}
	if o.Wait == 0 {
		o.Wait = 30 * time.Second
	}
	b, err := c.Begin(ctx, ns, key, fingerprint, BeginOptions{Lease: o.Lease, Wait: o.Wait, Retention: o.Retention})
	if err != nil {
		return Result{}, err
	}
	switch b.Outcome {
	case Completed:
		return *b.Result, nil
	case InProgress:
		return Result{}, ErrInProgress
	case Mismatch:
		return Result{}, ErrMismatch
	}
	// The work and the heartbeat get contexts of their own: the heartbeat
	// ends with Run, and a lost lease cancels the work.
	workCtx, cancelWork := context.WithCancel(ctx)
	defer cancelWork()
	beatCtx, stopBeat := context.WithCancel(context.Background())
	var lost atomic.Bool
	var beats sync.WaitGroup
	beats.Add(1)
	go func() {
		defer beats.Done()
		ticker := time.NewTicker(o.Lease / 3)
		defer ticker.Stop()
		for {
			select {
			case <-beatCtx.Done():
				return
			case <-ticker.C:
				if err := c.Extend(beatCtx, ns, key, b.Token, o.Lease); errors.Is(err, ErrLeaseLost) {
					lost.Store(true)
					cancelWork()
					return
				}
			}
		}
	}()
	// Finishing calls use their own deadline: a caller's context that ran
	// out during the work must not lose the work's result.
	finish := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 20*time.Second)
	}
	r, err := func() (r Result, err error) {
		defer func() {
			stopBeat()
			beats.Wait()
			if p := recover(); p != nil {
				fctx, cancel := finish()
				_ = c.Release(fctx, ns, key, b.Token)
				cancel()
				panic(p)
			}
		}()
		return work(workCtx, b.Token)
	}()
	if lost.Load() {
		return Result{}, ErrLeaseLost
	}
	fctx, cancel := finish()
	defer cancel()
	if err != nil {
		_ = c.Release(fctx, ns, key, b.Token) // Else it lapses by itself.
		return Result{}, err
	}
	if err := c.Complete(fctx, ns, key, b.Token, r); err != nil {
		return Result{}, err
	}
	r.Replayed = false
	return r, nil
}
