package server

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
)

// Streamed lookups answer one message per result, each with the cursor
// that resumes after it (SpiceDB's wire contract for authzed.api.v1, and
// mandate.v1's). The engine confirms results in batches; the helpers here
// build a batch's messages with a few allocations for the whole batch
// rather than several per result, which were most of the server's cost
// per result beside the transport's own.

// cursorsAfter returns the cursors resuming after each result, exactly as
// cursorAfter encodes them one by one, in one string allocation.
func (s *Server) cursorsAfter(rev store.Revision, reqHash uint64, results []engine.LookupResult) []string {
	prefix := make([]byte, 0, headerLen+2*binary.MaxVarintLen64)
	prefix = append(prefix, cursorKind, formatV1)
	prefix = append(prefix, s.inst[:]...)
	prefix = binary.AppendUvarint(prefix, uint64(rev))
	prefix = binary.AppendUvarint(prefix, reqHash)
	enc := base64.RawURLEncoding
	total := 0
	for _, r := range results {
		total += enc.EncodedLen(len(prefix) + uvarintLen(uint64(len(r.ID))) + len(r.ID) + sumLen)
	}
	out := make([]byte, 0, total)
	raw := prefix
	ends := make([]int, len(results))
	for i, r := range results {
		raw = binary.AppendUvarint(raw[:len(prefix)], uint64(len(r.ID)))
		raw = append(raw, r.ID...)
		sum := sha256.Sum256(raw)
		raw = append(raw, sum[:sumLen]...)
		out = enc.AppendEncode(out, raw)
		ends[i] = len(out)
	}
	all := string(out)
	cursors := make([]string, len(results))
	start := 0
	for i, end := range ends {
		cursors[i], start = all[start:end], end
	}
	return cursors
}

func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}
