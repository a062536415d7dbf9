package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"

	"github.com/mandate-authz/mandate/bench/workload"
)

// FreshnessOptions configures RunFreshness.
type FreshnessOptions struct {
	Workload    workload.Config
	PostgresURL string
	// Rate is the writes per second sent to the first replica, Duration
	// how long they are sent, Checkers the callers checking on the second
	// replica meanwhile.
	Rate     int
	Duration time.Duration
	Checkers int
	Log      io.Writer
}

// FreshnessResult is what RunFreshness measured.
type FreshnessResult struct {
	// Writes are the acknowledged writes on replica A; Visible the time
	// from each acknowledgement to replica B answering, at least as fresh
	// as its token, that the written relationship grants view (an upper
	// bound on the visibility delay: it includes one check round trip).
	Writes  Stats `json:"writes"`
	Visible Stats `json:"visible"`
	// Checks are replica B's minimize_latency checks during the writes.
	Checks Stats `json:"checks"`
	// Late counts writes sent more than a millisecond behind schedule (the
	// writers could not keep the rate).
	Late int64 `json:"late"`
}

// RunFreshness starts two `mandate serve` replicas in-process over one
// fresh PostgreSQL database, loads the workload through replica A, then
// writes one relationship per call to A at opts.Rate for opts.Duration
// while opts.Checkers callers check on B, and measures how soon each
// acknowledged write is visible on B.
func RunFreshness(ctx context.Context, opts FreshnessOptions) (*FreshnessResult, error) {
	logf := func(format string, args ...any) {
		if opts.Log != nil {
			fmt.Fprintf(opts.Log, format+"\n", args...)
		}
	}
	if opts.Rate <= 0 || opts.Duration <= 0 || opts.Checkers < 0 {
		return nil, fmt.Errorf("freshness: rate %d, duration %v, checkers %d: rate and duration must be positive", opts.Rate, opts.Duration, opts.Checkers)
	}
	w, err := workload.Generate(opts.Workload)
	if err != nil {
		return nil, err
	}
	dbURL, drop, err := freshDatabase(ctx, opts.PostgresURL, "freshness")
	if err != nil {
		return nil, err
	}
	defer drop()
	a, err := openMandateGRPC(ctx, "postgres", dbURL, MinimizeLatency)
	if err != nil {
		return nil, fmt.Errorf("replica A: %w", err)
	}
	defer a.Close()
	logf("freshness: loading %d relationships through replica A (load average %v)", len(w.Rels)+len(w.AgentRels), loadAvg())
	if err := a.Load(ctx, w); err != nil {
		return nil, fmt.Errorf("loading replica A: %w", err)
	}
	b, err := openMandateGRPC(ctx, "postgres", dbURL, MinimizeLatency)
	if err != nil {
		return nil, fmt.Errorf("replica B: %w", err)
	}
	defer b.Close()

	runID := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	writeAndSee := func(ctx context.Context, n int) (ack, visible time.Duration, err error) {
		r := workload.WriteRel(runID, 0, n, opts.Workload.Users)
		p, err := pbRelationship(r)
		if err != nil {
			return 0, 0, err
		}
		t0 := time.Now()
		resp, err := a.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{
			Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: p,
		}}})
		if err != nil {
			return 0, 0, fmt.Errorf("write %s on A: %w", r, err)
		}
		t1 := time.Now()
		got, err := b.perm.Check(ctx, &pb.CheckRequest{
			Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: resp.GetWrittenAt()}},
			Resource:    &pb.ObjectReference{ObjectType: r.Resource.Type, ObjectId: r.Resource.ID},
			Permission:  workload.Permission,
			Subject:     &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: r.Subject.Type, ObjectId: r.Subject.ID}},
		})
		if err != nil {
			return 0, 0, fmt.Errorf("check of %s on B: %w", r, err)
		}
		if got.GetDecision() != pb.Decision_DECISION_ALLOWED {
			return 0, 0, fmt.Errorf("replica B answers %s for %s at least as fresh as its write", got.GetDecision(), r)
		}
		return t1.Sub(t0), time.Since(t1), nil
	}
	// B has caught up with the load once it sees a write made after it.
	if _, _, err := writeAndSee(ctx, -1); err != nil {
		return nil, fmt.Errorf("waiting for replica B: %w", err)
	}
	logf("freshness: %d writes/s to A for %v, %d checkers on B (load average %v)", opts.Rate, opts.Duration, opts.Checkers, loadAvg())

	res := &FreshnessResult{}
	var checks Stats
	checksDone := make(chan struct{})
	go func() {
		defer close(checksDone)
		if opts.Checkers == 0 {
			return
		}
		// As long as the writes: measure stops on its own.
		checks = measure(ctx, opts.Duration, opts.Checkers, func(ctx context.Context, worker, n int) (int, int, error) {
			c := w.Checks[(worker*7919+n)%len(w.Checks)]
			if _, err := b.Check(ctx, c); err != nil {
				return 0, 0, err
			}
			return 1, 0, nil
		})
	}()

	// Writes go out on a fixed schedule, each on its own goroutine, so a
	// slow write delays no other (an open-loop load, as from many clients).
	var (
		mu        sync.Mutex
		acks, vis histogram
		errs      int64
		firstErr  error
		late      atomic.Int64
		wg        sync.WaitGroup
	)
	interval := time.Second / time.Duration(opts.Rate)
	start := time.Now()
	total := int(opts.Duration / interval)
	for n := range total {
		due := start.Add(time.Duration(n) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		} else if d < -time.Millisecond {
			late.Add(1)
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			ack, v, err := writeAndSee(ctx, n)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if errs++; firstErr == nil {
					firstErr = err
				}
				return
			}
			acks.record(ack)
			vis.record(v)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	<-checksDone
	res.Writes = histogramStats(&acks, elapsed, errs, firstErr)
	res.Visible = histogramStats(&vis, elapsed, errs, firstErr)
	res.Checks = checks
	res.Late = late.Load()
	if firstErr != nil {
		return res, fmt.Errorf("freshness: %d writes failed, the first: %w", errs, firstErr)
	}
	if res.Writes.Calls == 0 {
		return res, errors.New("freshness: no write completed")
	}
	return res, nil
}

// histogramStats summarizes latencies recorded over elapsed.
func histogramStats(h *histogram, elapsed time.Duration, errs int64, firstErr error) Stats {
	s := Stats{
		Calls: int64(h.n), Items: int64(h.n), Seconds: elapsed.Seconds(),
		P50Ms: ms(h.quantile(0.50)), P95Ms: ms(h.quantile(0.95)), P99Ms: ms(h.quantile(0.99)),
		Errors: errs,
	}
	if elapsed > 0 {
		s.CallsPerSec = float64(h.n) / elapsed.Seconds()
		s.ItemsPerSec = s.CallsPerSec
	}
	if firstErr != nil {
		s.FirstError = firstErr.Error()
	}
	return s
}
