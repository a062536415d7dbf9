package server_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
)

// wireCodec sends requests as given bytes (a standard client refuses to
// encode invalid UTF-8) and decodes replies with the standard decoder.
type wireCodec struct{}

func (wireCodec) Name() string { return "proto" }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// badUTF8 encodes msg with every "zzz" replaced by three bytes that are
// not UTF-8.
func badUTF8(t *testing.T, msg proto.Message) []byte {
	t.Helper()
	wire, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(wire, []byte("zzz")) {
		t.Fatal("the message has no zzz to spoil")
	}
	return bytes.ReplaceAll(wire, []byte("zzz"), []byte("a\xffb"))
}

// deepContext encodes msg with its context field replaced by a
// google.protobuf.Struct nested levels deep ({"a": {"a": ...}}), all ASCII.
// It is built outside in, from the sizes, in linear time.
func deepContext(t *testing.T, msg proto.Message, levels int) []byte {
	t.Helper()
	fd := msg.ProtoReflect().Descriptor().Fields().ByName("context")
	if fd == nil {
		t.Fatalf("%T has no context field", msg)
	}
	// sizes[i]: the Struct i levels from the innermost (empty) one.
	entry := func(inner int) (value, ent int) {
		value = 1 + protowire.SizeVarint(uint64(inner)) + inner // Value{struct_value}
		ent = 3 + 1 + protowire.SizeVarint(uint64(value)) + value
		return
	}
	sizes := make([]int, levels+1)
	for i := 1; i <= levels; i++ {
		_, ent := entry(sizes[i-1])
		sizes[i] = 1 + protowire.SizeVarint(uint64(ent)) + ent
	}
	wire, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	out := protowire.AppendTag(wire, fd.Number(), protowire.BytesType)
	out = protowire.AppendVarint(out, uint64(sizes[levels]))
	for i := levels; i >= 1; i-- {
		value, ent := entry(sizes[i-1])
		out = protowire.AppendTag(out, 1, protowire.BytesType) // Struct.fields
		out = protowire.AppendVarint(out, uint64(ent))
		out = protowire.AppendTag(out, 1, protowire.BytesType) // entry key
		out = protowire.AppendString(out, "a")
		out = protowire.AppendTag(out, 2, protowire.BytesType) // entry value
		out = protowire.AppendVarint(out, uint64(value))
		out = protowire.AppendTag(out, 5, protowire.BytesType) // Value.struct_value
		out = protowire.AppendVarint(out, uint64(sizes[i-1]))
	}
	return out
}

// TestMalformedRequestsAreInvalidArgument sends requests with a string that
// is not UTF-8 and requests nested past the decoder's limit to every kind
// of method of both APIs: each answers INVALID_ARGUMENT naming the field
// (it was INTERNAL), and the server keeps serving.
func TestMalformedRequestsAreInvalidArgument(t *testing.T) {
	ts := startServer(t, func(c *server.Config) { c.Limits.MaxMessageBytes = 8 << 20 })
	ts.seed()
	conn := ts.conn
	zconn := ts.dial(testKey)
	call := func(method string, reply proto.Message) func(context.Context, []byte) error {
		return func(ctx context.Context, wire []byte) error {
			return conn.Invoke(ctx, method, wire, reply, grpc.ForceCodecV2(wireCodec{}))
		}
	}
	// serverStream sends one request and reads the stream to its end.
	serverStream := func(method string, reply func() proto.Message) func(context.Context, []byte) error {
		return func(ctx context.Context, wire []byte) error {
			st, err := zconn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method, grpc.ForceCodecV2(wireCodec{}))
			if err != nil {
				return err
			}
			if err := st.SendMsg(wire); err != nil {
				return err
			}
			st.CloseSend()
			for {
				if err := st.RecvMsg(reply()); err != nil {
					return err
				}
			}
		}
	}
	clientStream := func(method string, reply proto.Message) func(context.Context, []byte) error {
		return func(ctx context.Context, wire []byte) error {
			st, err := zconn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, method, grpc.ForceCodecV2(wireCodec{}))
			if err != nil {
				return err
			}
			if err := st.SendMsg(wire); err != nil {
				return err
			}
			st.CloseSend()
			return st.RecvMsg(reply)
		}
	}
	check := &pb.CheckRequest{Resource: obj("doc", "zzz"), Permission: "view", Subject: subj("user", "ann")}
	zcheck := &v1.CheckPermissionRequest{Resource: zobj("doc", "readme"), Permission: "view", Subject: zsubj("user:zzz")}
	const deep = 20_000
	cases := []struct {
		name     string
		call     func(context.Context, []byte) error
		wire     []byte
		fragment string
	}{
		{"mandate.v1 unary, invalid UTF-8", call("/mandate.v1.PermissionService/Check", &pb.CheckResponse{}), badUTF8(t, check), "resource.object_id: not valid UTF-8"},
		{"mandate.v1 unary, too deep", call("/mandate.v1.PermissionService/Check", &pb.CheckResponse{}),
			deepContext(t, &pb.CheckRequest{Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "ann")}, deep), "context: messages nested more than"},
		{"mandate.v1 bulk item, invalid UTF-8", call("/mandate.v1.PermissionService/CheckBulk", &pb.CheckBulkResponse{}),
			badUTF8(t, &pb.CheckBulkRequest{Items: []*pb.CheckBulkRequestItem{
				{Resource: obj("doc", "a"), Permission: "view", Subject: subj("user", "ann")},
				{Resource: obj("doc", "b"), Permission: "zzz", Subject: subj("user", "ann")}}}), "items[1].permission: not valid UTF-8"},
		{"mandate.v1 client stream, invalid UTF-8", clientStream("/mandate.v1.RelationshipService/ImportRelationships", &pb.ImportRelationshipsResponse{}),
			badUTF8(t, &pb.ImportRelationshipsRequest{Relationships: mustParse(t, "doc:zzz#viewer@user:ann")}), "relationships[0].resource.object_id: not valid UTF-8"},
		{"authzed unary, invalid UTF-8", call("/authzed.api.v1.PermissionsService/CheckPermission", &v1.CheckPermissionResponse{}), badUTF8(t, zcheck), "subject.object.object_id: not valid UTF-8"},
		{"authzed unary, too deep", call("/authzed.api.v1.PermissionsService/CheckPermission", &v1.CheckPermissionResponse{}),
			deepContext(t, &v1.CheckPermissionRequest{Resource: zobj("doc", "readme"), Permission: "view", Subject: zsubj("user:ann")}, deep), "context: messages nested more than"},
		{"authzed server stream, invalid UTF-8", serverStream("/authzed.api.v1.PermissionsService/ReadRelationships", func() proto.Message { return &v1.ReadRelationshipsResponse{} }),
			badUTF8(t, &v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc", OptionalRelation: "zzz"}}), "relationship_filter.optional_relation: not valid UTF-8"},
		{"authzed server stream, too deep", serverStream("/authzed.api.v1.PermissionsService/LookupResources", func() proto.Message { return &v1.LookupResourcesResponse{} }),
			deepContext(t, &v1.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:ann")}, deep), "context: messages nested more than"},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(ts.ctx(), tt.wire)
			wantCode(t, err, codes.InvalidArgument, tt.fragment)
			if strings.Contains(status.Convert(err).Message(), "grpc:") {
				t.Errorf("message %q still has gRPC's internal wording", status.Convert(err).Message())
			}
		})
	}
	// Still serving.
	if _, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Consistency: fullyConsistent(), Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "ann")}); err != nil {
		t.Fatalf("a good check after the bad requests: %v", err)
	}
}

// TestServerVersionAsSpiceDB: a call carrying SpiceDB's version request
// header gets Mandate's version in the response header (where zed reads
// it) and trailer (where SpiceDB v1.56 puts it), even when the call itself
// fails, as `zed version`'s ReadSchema on an empty store does; a call
// without the header, or without a key, gets none.
func TestServerVersionAsSpiceDB(t *testing.T) {
	ts := startServer(t, nil)
	c := mandateClient(t, ts, testKey)
	ask := metadata.AppendToOutgoingContext(ts.ctx(), "io.spicedb.requestversion", "")
	var header, trailer metadata.MD
	_, err := c.ReadSchema(ask, &v1.ReadSchemaRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("ReadSchema on an empty store: %v, want NotFound", err)
	}
	want := server.Version()
	if !strings.HasSuffix(want, "+mandate") || !strings.HasPrefix(want, "v") {
		t.Fatalf("Version() = %q, want semver with +mandate build metadata", want)
	}
	if got := header.Get("io.spicedb.debug.version"); len(got) != 1 || got[0] != want {
		t.Errorf("header io.spicedb.debug.version = %q, want [%q]", got, want)
	}
	if got := trailer.Get("io.spicedb.debug.version"); len(got) != 1 || got[0] != want {
		t.Errorf("trailer io.spicedb.debug.version = %q, want [%q]", got, want)
	}
	// A stream too.
	ts.writeSchema(testSchema)
	header = nil
	stream, err := c.ReadRelationships(ask, &v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc"}})
	if err != nil {
		t.Fatal(err)
	}
	recvAll(t, stream)
	if header, err = stream.Header(); err != nil || len(header.Get("io.spicedb.debug.version")) != 1 {
		t.Errorf("stream header = %v, %v; want the version", header, err)
	}
	// Not asked: nothing.
	header = nil
	if _, err := c.ReadSchema(ts.ctx(), &v1.ReadSchemaRequest{}, grpc.Header(&header)); err != nil {
		t.Fatal(err)
	}
	if got := header.Get("io.spicedb.debug.version"); len(got) != 0 {
		t.Errorf("unrequested version %q", got)
	}
	// No key: refused before the version is reported.
	header = nil
	anon := mandateClient(t, ts, "")
	if _, err := anon.ReadSchema(ask, &v1.ReadSchemaRequest{}, grpc.Header(&header)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ReadSchema without a key: %v", err)
	}
	if got := header.Get("io.spicedb.debug.version"); len(got) != 0 {
		t.Errorf("version %q told to a caller without a key", got)
	}
}

// TestDeleteOverLimitDetailsMatchSpiceDB: a delete that matches more than
// its limit is refused with the ErrorInfo SpiceDB sends, metadata included
// (zed words its message from the limit there), for the same filter.
func TestDeleteOverLimitDetailsMatchSpiceDB(t *testing.T) {
	ts := startServer(t, nil)
	mandate := mandateClient(t, ts, testKey)
	spice := startSpiceDB(t)
	ctx := ts.ctx()
	infos := map[string]*errdetails.ErrorInfo{}
	for name, c := range map[string]interface {
		WriteSchema(context.Context, *v1.WriteSchemaRequest, ...grpc.CallOption) (*v1.WriteSchemaResponse, error)
		WriteRelationships(context.Context, *v1.WriteRelationshipsRequest, ...grpc.CallOption) (*v1.WriteRelationshipsResponse, error)
		DeleteRelationships(context.Context, *v1.DeleteRelationshipsRequest, ...grpc.CallOption) (*v1.DeleteRelationshipsResponse, error)
	}{"mandate": mandate, "spicedb": spice} {
		if _, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: errorSchema}); err != nil {
			t.Fatal(err)
		}
		var texts []string
		for i := range 5 {
			texts = append(texts, fmt.Sprintf("doc:d%d#viewer@user:ann", i))
		}
		if _, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(zcreate, zrels(t, texts...)...)}); err != nil {
			t.Fatal(err)
		}
		_, err := c.DeleteRelationships(ctx, &v1.DeleteRelationshipsRequest{OptionalLimit: 3, RelationshipFilter: &v1.RelationshipFilter{
			ResourceType: "doc", OptionalRelation: "viewer",
			OptionalSubjectFilter: &v1.SubjectFilter{SubjectType: "user", OptionalSubjectId: "ann"}}})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: delete over its limit: %v, want InvalidArgument", name, err)
		}
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				infos[name] = info
			}
		}
		if infos[name] == nil {
			t.Fatalf("%s: no ErrorInfo in %v", name, err)
		}
	}
	if !proto.Equal(infos["mandate"], infos["spicedb"]) {
		t.Errorf("ErrorInfo:\n mandate %v\n spicedb %v", infos["mandate"], infos["spicedb"])
	}
	if infos["mandate"].GetMetadata()["limit"] != "3" {
		t.Errorf("metadata %v lacks limit 3", infos["mandate"].GetMetadata())
	}
}
