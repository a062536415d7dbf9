package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/mandate-authz/mandate/store"
)

// sqlError carries a SQLSTATE as pgx's *pgconn.PgError does.
type sqlError string

func (e sqlError) Error() string    { return "ERROR (SQLSTATE " + string(e) + ")" }
func (e sqlError) SQLState() string { return string(e) }

// retryable is a driver error raised before anything was sent, as pgx's
// error for a closed connection is.
type retryable struct{}

func (retryable) Error() string     { return "conn closed" }
func (retryable) SafeToRetry() bool { return true }

func TestCodeOfStoreErrors(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	cases := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"refused connection", fmt.Errorf("head: failed to connect: %w", refused), codes.Unavailable},
		{"connection reset", fmt.Errorf("write: %w", syscall.ECONNRESET), codes.Unavailable},
		{"connection cut mid-reply", fmt.Errorf("failed to receive message: %w", io.ErrUnexpectedEOF), codes.Unavailable},
		{"closed connection", fmt.Errorf("write: %w", retryable{}), codes.Unavailable},
		{"connection failure (08006)", fmt.Errorf("write: %w", sqlError("08006")), codes.Unavailable},
		{"admin shutdown (57P01)", fmt.Errorf("write: %w", sqlError("57P01")), codes.Unavailable},
		{"starting up (57P03)", sqlError("57P03"), codes.Unavailable},
		{"unique violation (23505) is not unavailability", sqlError("23505"), codes.Internal},
		{"any other error", errors.New("something broke"), codes.Internal},
		{"the caller's deadline wins", fmt.Errorf("timeout: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"store sentinels keep their codes", fmt.Errorf("write: %w", store.ErrPreconditionFailed), codes.FailedPrecondition},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := codeOf(c.err); got != c.want {
				t.Errorf("codeOf(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

func TestMaxRevisionWait(t *testing.T) {
	if d, err := maxRevisionWait(0); err != nil || d != DefaultMaxRevisionWait {
		t.Errorf("maxRevisionWait(0) = %v, %v; want the default %v", d, err, DefaultMaxRevisionWait)
	}
	if d, err := maxRevisionWait(time.Second); err != nil || d != time.Second {
		t.Errorf("maxRevisionWait(1s) = %v, %v", d, err)
	}
	if _, err := maxRevisionWait(-time.Second); err == nil || !strings.Contains(err.Error(), "--max-revision-wait") {
		t.Errorf("maxRevisionWait(-1s) = %v; want an error naming --max-revision-wait", err)
	}
}

func TestJitter(t *testing.T) {
	for _, d := range []time.Duration{followRetryMin, time.Second, followRetryMax} {
		for range 100 {
			if j := jitter(d); j < d/2 || j > d {
				t.Fatalf("jitter(%v) = %v, want within [%v, %v]", d, j, d/2, d)
			}
		}
	}
}
