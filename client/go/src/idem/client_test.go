package idem

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startServer runs the real idem-server ($IDEM_SERVER_BINARY, set by ctest)
// on a free loopback port and returns a client for it.
func startServer(t *testing.T) *Client {
	binary := os.Getenv("IDEM_SERVER_BINARY")
	if binary == "" {
		t.Skip("IDEM_SERVER_BINARY is not set (ctest sets it)")
	}
	dir := t.TempDir()
	portFile := filepath.Join(dir, "port")
	cmd := exec.Command(binary, "--listen=127.0.0.1:0", "--data-dir="+filepath.Join(dir, "data"),
		"--port-file="+portFile, "--metrics-listen=", "--http-listen=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if data, err := os.ReadFile(portFile); err == nil && strings.Contains(string(data), "\n") {
			port := strings.SplitN(string(data), "\n", 2)[0]
			c, err := Dial("127.0.0.1:" + port)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			return c
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("idem-server did not start in 30 s")
	return nil
}

func TestRunDoesTheWorkOnceAndReplays(t *testing.T) {
	c := startServer(t)
	fp := Fingerprint([]byte("order 1"))
	var runs int32
	var wg sync.WaitGroup
	results := make([]Result, 8)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := c.Run(context.Background(), "orders", "k1", fp, RunOptions{Wait: 10 * time.Second},
				func(ctx context.Context, token uint64) (Result, error) {
					atomic.AddInt32(&runs, 1)
					time.Sleep(200 * time.Millisecond)
					return Result{Code: 201, Body: []byte("created")}, nil
				})
			if err != nil {
				t.Error(err)
			}
			results[i] = r
		}(i)
	}
	wg.Wait()
	if runs != 1 {
		t.Fatalf("work ran %d times, want 1", runs)
	}
	fresh := 0
	for _, r := range results {
		if string(r.Body) != "created" || r.Code != 201 {
			t.Fatalf("result %+v", r)
		}
		if !r.Replayed {
			fresh++
		}
	}
	if fresh != 1 {
		t.Fatalf("%d results not replayed, want 1", fresh)
	}
	if _, err := c.Run(context.Background(), "orders", "k1", Fingerprint([]byte("other")), RunOptions{},
		func(context.Context, uint64) (Result, error) { return Result{}, nil }); !errors.Is(err, ErrMismatch) {
		t.Fatalf("reused key: %v, want ErrMismatch", err)
	}
}

func TestFailedOrPanickingWorkReleasesTheKey(t *testing.T) {
	c := startServer(t)
	fp := Fingerprint([]byte("x"))
	boom := errors.New("boom")
	if _, err := c.Run(context.Background(), "orders", "k2", fp, RunOptions{},
		func(context.Context, uint64) (Result, error) { return Result{}, boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic did not propagate")
			}
		}()
		_, _ = c.Run(context.Background(), "orders", "k2", fp, RunOptions{},
			func(context.Context, uint64) (Result, error) { panic("work panicked") })
	}()
	// Released both times: a retry runs the work.
	r, err := c.Run(context.Background(), "orders", "k2", fp, RunOptions{Wait: time.Second},
		func(context.Context, uint64) (Result, error) { return Result{Body: []byte("third")}, nil })
	if err != nil || string(r.Body) != "third" || r.Replayed {
		t.Fatalf("retry: %+v, %v", r, err)
	}
}

func TestHeartbeatKeepsAShortLease(t *testing.T) {
	c := startServer(t)
	fp := Fingerprint([]byte("slow"))
	r, err := c.Run(context.Background(), "orders", "k3", fp, RunOptions{Lease: time.Second},
		func(ctx context.Context, token uint64) (Result, error) {
			time.Sleep(1800 * time.Millisecond) // Past the 1 s lease.
			b, err := c.Begin(ctx, "orders", "k3", fp, BeginOptions{})
			if err != nil {
				return Result{}, err
			}
			if b.Outcome != InProgress {
				t.Errorf("another caller got %s, want IN_PROGRESS", b.Outcome)
			}
			return Result{Body: []byte("kept")}, nil
		})
	if err != nil || string(r.Body) != "kept" {
		t.Fatalf("%+v, %v", r, err)
	}
}

// 32 goroutines share one Client: over the Session stream (the default) and
// with one unary RPC per call, every call gets its own answer.
func TestGoroutinesShareOneClient(t *testing.T) {
	for _, unary := range []bool{false, true} {
		c := startServer(t)
		c.Unary = unary
		var wg sync.WaitGroup
		var failures int32
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				ctx := context.Background()
				for i := 0; i < 20; i++ {
					key := newOwner()
					body := []byte(key + " body")
					b, err := c.Begin(ctx, "shared", key, []byte("fp"), BeginOptions{})
					if err != nil || b.Outcome != Acquired {
						atomic.AddInt32(&failures, 1)
						continue
					}
					if err := c.Complete(ctx, "shared", key, b.Token, Result{Code: 201, Body: body}); err != nil {
						atomic.AddInt32(&failures, 1)
						continue
					}
					state, r, err := c.Lookup(ctx, "shared", key)
					if err != nil || state != Completed || string(r.Body) != string(body) {
						atomic.AddInt32(&failures, 1)
					}
				}
			}(g)
		}
		wg.Wait()
		if failures != 0 {
			t.Fatalf("unary=%v: %d calls failed", unary, failures)
		}
		// A stale token is still FAILED_PRECONDITION, as ErrLeaseLost.
		if err := c.Complete(context.Background(), "shared", "never-begun", 7, Result{}); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("unary=%v: Complete of a key never begun: %v", unary, err)
		}
	}
}
