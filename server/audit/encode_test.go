package audit

import (
	"encoding/json"
	"testing"
	"time"
)

// TestEncoderMatchesEncodingJSON: the hand-written encoder writes what
// encoding/json writes for the same event, so records stay plain JSON that
// any reader decodes to the same values.
func TestEncoderMatchesEncodingJSON(t *testing.T) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)
	odd := "q\"uote\\ <tag> & ctl\x01\x1f\n\r\t\b\f é 世 \u2028\u2029 bad\xff\xfe end"
	for name, ev := range map[string]*Event{
		"minimal": {Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Operation: OpCheck, Decision: Allowed},
		"full": {
			V: 1, Seq: 42, ChainID: "node-a", Time: time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("x", 3600)),
			RequestID: "r-1", Caller: "billing", Source: "10.0.0.1:5", Transport: "rest", Operation: OpWriteRelationships,
			Resource: "doc:1", Permission: "viewer", Subject: "group:eng#member", SubjectKind: Userset, OnBehalfOf: "user:a",
			Principal: "user:a", Chain: []Link{{Subject: "agent:b", Grant: Denied, Link: Allowed, Missing: []string{"x", "y"}, Failed: true}, {Subject: "user:a"}},
			Context:  map[string]any{"b": 1.5, "a": []any{"x", true, nil}, "n": map[string]any{"<": "&"}},
			Decision: Conditional, Reason: "out_of_scope", Missing: []string{"amount"}, ResolvableByApproval: true,
			Code: "InvalidArgument", Error: "bad", Revision: 7, Update: "touch", Caveat: "c", ExpiresAt: &exp, Count: -3,
			Detail: "filter doc#viewer", PrevHash: "abc",
		},
		"odd strings": {Time: time.Unix(0, 0).UTC(), Operation: Operation(odd), Resource: odd, Error: odd, Decision: Decision(odd),
			Chain: []Link{{Subject: odd, Missing: []string{odd}}}, Missing: []string{odd}},
	} {
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendPrefix(nil, ev)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, '}')
		if string(got) != string(want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	ev := &Event{Time: time.Now().UTC(), RequestID: "abc-1", Caller: "billing", Source: "127.0.0.1:5000", Transport: "grpc",
		Operation: OpCheck, Resource: "document:d123", Permission: "view", Subject: "agent:s12", SubjectKind: Agent, Principal: "user:u12",
		Chain:    []Link{{Subject: "agent:s12", Grant: Allowed, Link: Allowed}, {Subject: "agent:a12", Grant: Allowed, Link: Allowed}, {Subject: "user:u12", Grant: Allowed}},
		Decision: Allowed, Revision: 12345}
	var buf []byte
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		if buf, err = encode(buf[:0], ev, uint64(i), ev.Hash); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}
