package mcpgateway_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// BenchmarkToolsCall measures one tools/call's latency at 1 and 16
// concurrent sessions (2025-11-25, a stateful go-sdk server), calling the
// MCP server directly and through the gateway with and without the
// decision cache. It reports p50 and p99; the gateway's added latency is
// the difference from direct.
//
//	go test ./mcpgateway -run '^$' -bench ToolsCall -benchtime 3200x
func BenchmarkToolsCall(b *testing.B) {
	for _, benchSessions := range []int{1, 16} {
		for _, mode := range []string{"direct", "gateway-uncached", "gateway-cached"} {
			benchToolsCall(b, mode, benchSessions)
		}
	}
}

func benchToolsCall(b *testing.B, mode string, benchSessions int) {
	b.Run(fmt.Sprintf("sessions=%d/%s", benchSessions, mode), func(b *testing.B) {
		ttl := time.Duration(0)
		if mode == "gateway-cached" {
			ttl = time.Hour
		}
		e := newEnv(b, envOptions{cacheTTL: ttl})
		endpoint, token := e.resource, e.token("alice", "helper", nil)
		if mode == "direct" {
			endpoint, token = e.direct, ""
		}
		sessions := make([]*mcp.ClientSession, benchSessions)
		for i := range sessions {
			sessions[i], _ = e.goClient(endpoint, token, "2025-11-25")
			callBench(b, sessions[i]) // warm: connection, and the cache
		}
		lat := make([][]time.Duration, benchSessions)
		b.ResetTimer()
		var wg sync.WaitGroup
		for i := range sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := i; j < b.N; j += benchSessions {
					start := time.Now()
					callBench(b, sessions[i])
					lat[i] = append(lat[i], time.Since(start))
				}
			}()
		}
		wg.Wait()
		b.StopTimer()
		reportPercentiles(b, slices.Concat(lat...))
		if hits, misses := e.gw.CacheStats(); hits+misses > 0 {
			b.ReportMetric(float64(hits)/float64(hits+misses), "cache-hit-ratio")
		}
	})
}

// BenchmarkToolsCallPaced measures the latency a tools/call sees at 16
// concurrent sessions that call at a fixed total rate (open loop), as MCP
// sessions do (a call, then the model's turn), rather than as fast as the
// machine allows: closed-loop sessions on a saturated machine measure
// queueing, where the added latency is the gateway's CPU per call times
// the queue (BenchmarkToolsCall). Each session sends on its own schedule
// (calls spread evenly, phases staggered); latency is from the scheduled
// send, and "late" is the share of calls that started more than 1 ms
// after their schedule: Go's timers wake an idle process with millisecond
// resolution, so lateness from the schedule measures the sleep, not the
// call; a run whose late share grows with the rate has fallen behind
// (queueing), and its latencies understate it.
//
//	go test ./mcpgateway -run '^$' -bench ToolsCallPaced -benchtime 8000x
func BenchmarkToolsCallPaced(b *testing.B) {
	const sessions = 16
	for _, rate := range []int{500, 1000, 2000} {
		for _, mode := range []string{"direct", "gateway-uncached", "gateway-cached"} {
			benchPaced(b, mode, sessions, rate)
		}
	}
}

func benchPaced(b *testing.B, mode string, benchSessions, rate int) {
	b.Run(fmt.Sprintf("sessions=%d/rate=%d/%s", benchSessions, rate, mode), func(b *testing.B) {
		ttl := time.Duration(0)
		if mode == "gateway-cached" {
			ttl = time.Hour
		}
		e := newEnv(b, envOptions{cacheTTL: ttl})
		endpoint, token := e.resource, e.token("alice", "helper", nil)
		if mode == "direct" {
			endpoint, token = e.direct, ""
		}
		sessions := make([]*mcp.ClientSession, benchSessions)
		for i := range sessions {
			sessions[i], _ = e.goClient(endpoint, token, "2025-11-25")
			callBench(b, sessions[i])
		}
		interval := time.Duration(benchSessions) * time.Second / time.Duration(rate)
		lat := make([][]time.Duration, benchSessions)
		late := make([]int, benchSessions)
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for i := range sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				next := start.Add(interval * time.Duration(i) / time.Duration(benchSessions))
				for j := i; j < b.N; j += benchSessions {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					sent := time.Now()
					if sent.Sub(next) > time.Millisecond {
						late[i]++
					}
					callBench(b, sessions[i])
					lat[i] = append(lat[i], time.Since(sent))
					next = next.Add(interval)
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		reportPercentiles(b, slices.Concat(lat...))
		total := 0
		for _, n := range late {
			total += n
		}
		b.ReportMetric(float64(total)/float64(b.N), "late")
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
	})
}

func callBench(b *testing.B, cs *mcp.ClientSession) {
	res, err := cs.CallTool(ctxT(b), &mcp.CallToolParams{Name: "read_calendar", Arguments: map[string]any{"calendar_id": "alice"}})
	if err != nil || res.IsError {
		b.Errorf("call: %v %v", res, err)
	}
}

func reportPercentiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	at := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}

// BenchmarkRevokeToDenied measures the time from an acknowledged revoke of
// an acts_for link to the first call the gateway denies, with a session
// calling in a loop, with and without the decision cache.
//
//	go test ./mcpgateway -run '^$' -bench RevokeToDenied -benchtime 200x
func BenchmarkRevokeToDenied(b *testing.B) {
	for _, ttl := range []time.Duration{0, time.Hour} {
		b.Run(fmt.Sprintf("cache-ttl=%v", ttl), func(b *testing.B) {
			e := newEnv(b, envOptions{cacheTTL: ttl})
			cs, _ := e.goClient(e.resource, e.token("alice", "helper", nil), "2025-11-25")
			var took []time.Duration
			allowedAfter := 0
			for range b.N {
				e.mandate.write(b, pb.RelationshipUpdate_OPERATION_TOUCH, "agent:helper#acts_for@user:alice")
				for { // until the link is live again (and, cached, in the cache)
					if res, err := cs.CallTool(ctxT(b), &mcp.CallToolParams{Name: "read_calendar", Arguments: map[string]any{"calendar_id": "alice"}}); err == nil && !res.IsError {
						break
					}
				}
				e.mandate.write(b, pb.RelationshipUpdate_OPERATION_DELETE, "agent:helper#acts_for@user:alice")
				start := time.Now()
				for {
					_, err := cs.CallTool(ctxT(b), &mcp.CallToolParams{Name: "read_calendar", Arguments: map[string]any{"calendar_id": "alice"}})
					if err != nil {
						break
					}
					allowedAfter++
				}
				took = append(took, time.Since(start))
			}
			reportPercentiles(b, took)
			b.ReportMetric(float64(allowedAfter)/float64(b.N), "allowed-after-revoke/op")
		})
	}
}
