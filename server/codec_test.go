package server

import (
	"fmt"
	"strings"
	"testing"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

func bulkRequest(n int, ctx *structpb.Struct) *pb.CheckBulkRequest {
	req := &pb.CheckBulkRequest{Explain: true, Consistency: &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}}}
	for i := 0; i < n; i++ {
		req.Items = append(req.Items, &pb.CheckBulkRequestItem{
			Resource:   &pb.ObjectReference{ObjectType: "document", ObjectId: fmt.Sprintf("d%d", i)},
			Permission: "view",
			Subject:    &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: fmt.Sprintf("u%d", i)}},
			Context:    ctx,
		})
	}
	return req
}

// TestCodecAgreesWithStandardProto sends messages both ways between the
// server's codec and the standard protobuf encoding: ASCII input (decoded by
// generated code), valid non-ASCII UTF-8 and long fields (decoded by the
// standard codec), messages without generated code, and messages past the
// buffer-pooling threshold.
func TestCodecAgreesWithStandardProto(t *testing.T) {
	unicode, err := structpb.NewStruct(map[string]any{"city": "Zürich", "note": "日本"})
	if err != nil {
		t.Fatal(err)
	}
	ascii, err := structpb.NewStruct(map[string]any{"n": 3, "tags": []any{"a", "b"}, "on": true})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		msg  proto.Message
	}{
		{"check", &pb.CheckRequest{Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: "1"}, Permission: "view",
			Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "ann"}}, Context: ascii}},
		{"check with unicode context", &pb.CheckRequest{Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: "1"}, Permission: "view", Context: unicode}},
		{"bulk of 100", bulkRequest(100, ascii)},
		{"bulk of 1000 (pooled buffers)", bulkRequest(1000, nil)},
		{"long field", &pb.CheckRequest{Permission: strings.Repeat("p", 300)}},
		{"authzed check", &v1.CheckPermissionRequest{Resource: &v1.ObjectReference{ObjectType: "doc", ObjectId: "1"}, Permission: "view",
			Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "user", ObjectId: "ann"}}, Context: ascii}},
		{"no generated code", wrapperspb.String("plain")},
	}
	c := newCodec()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wire, err := proto.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			got := tt.msg.ProtoReflect().New().Interface()
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tt.msg) {
				t.Fatalf("decoded %v, want %v", got, tt.msg)
			}
			out, err := c.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			back := tt.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(out.Materialize(), back); err != nil {
				t.Fatal(err)
			}
			out.Free()
			if !proto.Equal(back, tt.msg) {
				t.Fatalf("encoded %v, want %v", back, tt.msg)
			}
		})
	}
}

// TestCodecRejectsInvalidUTF8 checks that a string that is not UTF-8, which
// the generated decoder would accept, is refused as the standard codec does.
func TestCodecRejectsInvalidUTF8(t *testing.T) {
	// Field 3 (permission), length 3, bytes that are not UTF-8.
	wire := []byte{0x1a, 0x03, 'a', 0xff, 'b'}
	var m pb.CheckRequest
	if err := newCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &m); err == nil {
		t.Fatalf("decoded %q, want an invalid UTF-8 error", m.GetPermission())
	}
	// The bytes are otherwise well formed: generated code alone takes them.
	var vt pb.CheckRequest
	if err := vt.UnmarshalVT(wire); err != nil || vt.GetPermission() != "a\xffb" {
		t.Fatalf("generated decoder: %q, %v; the test's wire bytes are wrong", vt.GetPermission(), err)
	}
}

func TestIsASCII(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"", true}, {"abc", true}, {"0123456789abcdef", true},
		{"0123456789abcde\x80", false}, {"\xc3\xa9", false}, {"1234567\xff12345678", false},
	} {
		if got := isASCII([]byte(tt.in)); got != tt.want {
			t.Errorf("isASCII(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// BenchmarkCodecUnmarshal measures decoding a CheckBulk of 100 items with
// a caveat context through the codec, whose depth scan runs first because
// the context can nest, against the generated decoder alone (the peer).
func BenchmarkCodecUnmarshal(b *testing.B) {
	ctx, err := structpb.NewStruct(map[string]any{"amount": 3, "limit": 10, "tags": []any{"a", "b"}})
	if err != nil {
		b.Fatal(err)
	}
	wire, err := proto.Marshal(bulkRequest(100, ctx))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("codec", func(b *testing.B) {
		c := newCodec()
		for b.Loop() {
			var m pb.CheckBulkRequest
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("generated-only", func(b *testing.B) {
		for b.Loop() {
			var m pb.CheckBulkRequest
			if err := m.UnmarshalVT(wire); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestCapMessage(t *testing.T) {
	long := strings.Repeat("Q", 1000)
	for _, tt := range []struct {
		name, in string
		want     []string
		max      int
	}{
		{"short stays", `type "doc": unknown`, []string{`type "doc": unknown`}, 100},
		{"long quoted value", fmt.Sprintf("resource: object type %q: expected a lowercase letter", long), []string{`"QQQ`, `"... (1000 bytes): expected a lowercase letter`}, 300},
		{"no half escape", fmt.Sprintf("%q", strings.Repeat("Q", 125)+"\n"+long), []string{`... (`}, 300},
		{"long message", strings.Repeat("word ", 1000), []string{"(5000 bytes in all)"}, maxErrorMessage + 40},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := capMessage(tt.in)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("capMessage = %q, lacks %q", got, w)
				}
			}
			if len(got) > tt.max {
				t.Errorf("capMessage is %d bytes, want at most %d", len(got), tt.max)
			}
			if strings.Contains(got, `\"...`) {
				t.Errorf("cut inside an escape: %q", got)
			}
		})
	}
}

func TestSizedChunks(t *testing.T) {
	size := func(n int) int { return n }
	for _, tt := range []struct {
		items []int
		max   int
		want  [][]int
	}{
		{nil, 10, [][]int{nil}},
		{[]int{3, 3, 3}, 10, [][]int{{3, 3, 3}}},
		{[]int{3, 3, 3, 3}, 10, [][]int{{3, 3, 3}, {3}}},
		{[]int{20, 1, 20}, 10, [][]int{{20}, {1}, {20}}},
	} {
		var got [][]int
		lastSeen := 0
		for part, last := range sizedChunks(tt.items, size, tt.max) {
			got = append(got, part)
			if last {
				lastSeen++
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) || lastSeen != 1 {
			t.Errorf("sizedChunks(%v, %d) = %v (%d marked last), want %v", tt.items, tt.max, got, lastSeen, tt.want)
		}
	}
}
