package harness

import (
	"context"
	"errors"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// histogram records latencies in log-linear buckets: 32 sub-buckets per
// power of two, so a percentile is within about 3% of the true value, at a
// fixed cost per record and no allocation.
type histogram struct {
	counts [64 * subBuckets]uint64
	n      uint64
}

const subBits = 5
const subBuckets = 1 << subBits

func bucketOf(ns int64) int {
	if ns < subBuckets {
		if ns < 0 {
			ns = 0
		}
		return int(ns)
	}
	v := uint64(ns)
	exp := bits.Len64(v) - subBits - 1 // >= 0
	sub := int(v>>uint(exp)) & (subBuckets - 1)
	return (exp+1)*subBuckets + sub
}

// lowerBound is the smallest latency in bucket b; upper the next bucket's.
func lowerBound(b int) int64 {
	if b < subBuckets {
		return int64(b)
	}
	exp := b/subBuckets - 1
	sub := b % subBuckets
	return int64(subBuckets+sub) << uint(exp)
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(int64(d))]++
	h.n++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the latency at quantile q (0..1): the middle of the
// bucket holding it.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := lowerBound(b), lowerBound(b+1)
			return time.Duration((lo + hi) / 2)
		}
	}
	return 0
}

// Stats is one measurement: how many calls and items completed in the
// window, their rate, and call latency percentiles.
type Stats struct {
	Calls   int64   `json:"calls"`
	Items   int64   `json:"items"`
	Seconds float64 `json:"seconds"`
	// CallsPerSec and ItemsPerSec are completed calls and items (checks,
	// relationships written, lookups) per second of the window.
	CallsPerSec float64 `json:"calls_per_sec"`
	ItemsPerSec float64 `json:"items_per_sec"`
	P50Ms       float64 `json:"p50_ms"`
	P95Ms       float64 `json:"p95_ms"`
	P99Ms       float64 `json:"p99_ms"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	// Results is the mean number of results per call (lookups only).
	Results float64 `json:"mean_results,omitempty"`
	// FirstP50Ms and FirstP99Ms time a lookup's first result from the
	// call (lookups only).
	FirstP50Ms float64 `json:"first_result_p50_ms,omitempty"`
	FirstP99Ms float64 `json:"first_result_p99_ms,omitempty"`
	// CPUCores is the CPU time this process used during the window divided
	// by the window: the cores the harness's callers and the in-process
	// server together got (a database server's CPU is not included).
	CPUCores float64 `json:"cpu_cores"`
}

// op performs one call for worker w as its n-th call, returning the items it
// covered (1 for a check, 100 for a bulk check) and, for lookups, the
// number of results.
type op func(ctx context.Context, worker, n int) (items, results int, err error)

// measure runs op from conc workers for dur and returns what completed.
// Calls still running at the end are cancelled and not counted, so a slow
// engine is bounded by the duration, not by a count.
func measure(ctx context.Context, dur time.Duration, conc int, f op) Stats {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		total    histogram
		items    int64
		results  int64
		errs     int64
		firstErr error
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	cpu0 := processCPU()
	start := time.Now()
	end := start.Add(dur)
	timer := time.AfterFunc(dur, func() { stop.Store(true); cancel() })
	defer timer.Stop()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := new(histogram)
			var myItems, myResults, myErrs int64
			var myErr error
			for n := 0; !stop.Load(); n++ {
				t0 := time.Now()
				it, res, err := f(ctx, w, n)
				t1 := time.Now()
				if t1.After(end) || stop.Load() {
					break // finished after the window: not counted
				}
				if err != nil {
					if ctx.Err() != nil && errors.Is(err, context.Canceled) {
						break
					}
					myErrs++
					if myErr == nil {
						myErr = err
					}
					continue
				}
				h.record(t1.Sub(t0))
				myItems += int64(it)
				myResults += int64(res)
			}
			mu.Lock()
			defer mu.Unlock()
			total.merge(h)
			items += myItems
			results += myResults
			errs += myErrs
			if firstErr == nil {
				firstErr = myErr
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	if elapsed > dur {
		elapsed = dur
	}
	s := Stats{
		Calls: int64(total.n), Items: items, Seconds: elapsed.Seconds(),
		CallsPerSec: float64(total.n) / elapsed.Seconds(),
		ItemsPerSec: float64(items) / elapsed.Seconds(),
		P50Ms:       ms(total.quantile(0.50)),
		P95Ms:       ms(total.quantile(0.95)),
		P99Ms:       ms(total.quantile(0.99)),
		Errors:      errs,
		CPUCores:    cpu.Seconds() / time.Since(start).Seconds(),
	}
	if firstErr != nil {
		s.FirstError = firstErr.Error()
	}
	if total.n > 0 {
		s.Results = float64(results) / float64(total.n)
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
