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
