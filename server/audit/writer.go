package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
)

// WriterSink writes records as JSON lines to a writer such as stdout, for a
// collector to ship. It cannot read the writer back, so each process starts
// a new chain: give its Log a fresh chain ID (NewChainID) so that Verify
// tells the runs apart in the collected output.
type WriterSink struct {
	name  string
	chain string
	mu    sync.Mutex
	w     io.Writer
	seq   uint64
	buf   []byte
}

// NewWriterSink writes to w; name describes it ("stdout"). chainID (see
// NewChainID) is written in every record; empty writes none.
func NewWriterSink(name string, w io.Writer, chainID string) *WriterSink {
	return &WriterSink{name: name, w: w, chain: chainID}
}

// ChainID returns the chain this sink's records belong to.
func (s *WriterSink) ChainID() string { return s.chain }

// NewChainID returns a random chain ID ("run-" and 16 hex digits).
func NewChainID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("drawing an audit chain id: %w", err)
	}
	return "run-" + hex.EncodeToString(b[:]), nil
}

// Describe implements Sink.
func (s *WriterSink) Describe() string { return s.name }

// Head implements Sink: a writer always starts a new chain.
func (s *WriterSink) Head(context.Context) (uint64, string, error) { return 0, "", nil }

// Write implements Sink with one write per batch, skipping records already
// written by an earlier attempt.
func (s *WriterSink) Write(_ context.Context, recs []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	buf := s.buf[:0]
	for _, r := range recs {
		if r.Event.Seq > s.seq {
			buf = append(buf, r.Line...)
		}
	}
	s.buf = buf
	if len(buf) == 0 {
		return nil
	}
	if _, err := s.w.Write(buf); err != nil {
		return fmt.Errorf("writing audit events to %s: %w", s.name, err)
	}
	s.seq = recs[len(recs)-1].Event.Seq
	return nil
}

// Close implements Sink; it does not close the writer.
func (s *WriterSink) Close() error { return nil }
