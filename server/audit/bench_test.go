package audit_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"

	"github.com/mandate-authz/mandate/server/audit"
)

// BenchmarkLogRecord measures the Log's throughput: Record on the caller's
// side, encoding, hashing and writing on the writer's, for a delegated
// check's event.
//
//	go test ./server/audit -run '^$' -bench BenchmarkLogRecord
func BenchmarkLogRecord(b *testing.B) {
	for _, sink := range []string{"discard", "file"} {
		b.Run("sink="+sink, func(b *testing.B) {
			var s audit.Sink = audit.NewWriterSink("discard", io.Discard, "")
			if sink == "file" {
				fs, err := audit.OpenFileSink(b.TempDir(), 0, nil)
				if err != nil {
					b.Fatal(err)
				}
				s = fs
			}
			l, err := audit.New(context.Background(), audit.Options{Sink: s})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := l.Record(ctx, checkEvent(i)); err != nil {
					b.Fatal(err)
				}
			}
			if err := l.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			l.Close(ctx)
		})
	}
}

// BenchmarkLogDurability measures what durability costs a caller on a file
// trail, with concurrent callers (GOMAXPROCS×8 goroutines): async is Record
// (a check), durable is RecordDurable (a write: it returns after the fsync
// of its batch, shared with the other callers in it), sync-all is Record
// under --audit-sync.
//
//	go test ./server/audit -run '^$' -bench BenchmarkLogDurability -benchtime 2s
func BenchmarkLogDurability(b *testing.B) {
	for _, mode := range []string{"async", "durable", "sync-all"} {
		b.Run("mode="+mode, func(b *testing.B) {
			fs, err := audit.OpenFileSink(b.TempDir(), 0, nil)
			if err != nil {
				b.Fatal(err)
			}
			l, err := audit.New(context.Background(), audit.Options{Sink: fs, SyncAll: mode == "sync-all"})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var n atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					ev := checkEvent(int(n.Add(1)))
					var err error
					if mode == "durable" {
						err = l.RecordDurable(ctx, ev)
					} else {
						err = l.Record(ctx, ev)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			if err := l.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			l.Close(ctx)
		})
	}
}
