package audit_test

import (
	"context"
	"io"
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
