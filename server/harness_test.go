package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const testKey = "test-key-0f3c9a"

// testSchema exercises usersets, wildcards, caveats, expiration, exclusion
// and an agent type.
const testSchema = `use expiration

definition user {}

definition agent {
	relation acts_for: user
}

definition group {
	relation member: user | group#member
}

caveat within_limit(amount int, limit int) {
	amount <= limit
}

definition doc {
	relation owner: user
	relation viewer: user | user:* | group#member | user with within_limit | user with expiration | agent
	relation banned: user
	permission edit = owner
	permission view = (viewer + owner) - banned
}
`

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testServer is a real server on loopback with clients for both transports.
type testServer struct {
	t      *testing.T
	srv    *server.Server
	st     *memory.Store
	conn   *grpc.ClientConn
	perm   pb.PermissionServiceClient
	rels   pb.RelationshipServiceClient
	schema pb.SchemaServiceClient
	base   string // http://127.0.0.1:port
	logs   *logBuffer
	stop   context.CancelFunc
	done   chan error
}

// bearer attaches a preshared key to every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func startServer(t *testing.T, mutate func(*server.Config)) *testServer {
	t.Helper()
	logs := &logBuffer{}
	cfg := server.Config{
		GRPCAddr:            "127.0.0.1:0",
		HTTPAddr:            "127.0.0.1:0",
		PresharedKeys:       []string{testKey},
		ShutdownGracePeriod: 5 * time.Second,
		Logger:              slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	st := memory.New()
	srv, err := server.New(st, engine.New(), cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{t: t, srv: srv, st: st, logs: logs, stop: cancel, done: make(chan error, 1)}
	go func() { ts.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		ts.shutdown()
		st.Close()
	})
	if srv.HTTPAddr() != nil {
		ts.base = "http://" + srv.HTTPAddr().String()
	}
	if cfg.GRPCTLSCertPath == "" {
		ts.conn = ts.dial(testKey)
		ts.perm = pb.NewPermissionServiceClient(ts.conn)
		ts.rels = pb.NewRelationshipServiceClient(ts.conn)
		ts.schema = pb.NewSchemaServiceClient(ts.conn)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !srv.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("server did not become ready within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	return ts
}

// dial opens a gRPC connection presenting key ("" for none).
func (ts *testServer) dial(key string) *grpc.ClientConn {
	ts.t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(key)))
	}
	conn, err := grpc.NewClient(ts.srv.GRPCAddr().String(), opts...)
	if err != nil {
		ts.t.Fatalf("dial: %v", err)
	}
	ts.t.Cleanup(func() { conn.Close() })
	return conn
}

// shutdown stops the server once and returns Run's result.
func (ts *testServer) shutdown() error {
	ts.stop()
	select {
	case err, ok := <-ts.done:
		if ok {
			close(ts.done)
		}
		return err
	case <-time.After(15 * time.Second):
		ts.t.Error("server did not shut down within 15s")
		return nil
	}
}

func (ts *testServer) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	ts.t.Cleanup(cancel)
	return ctx
}

func (ts *testServer) writeSchema(text string) string {
	ts.t.Helper()
	resp, err := ts.schema.WriteSchema(ts.ctx(), &pb.WriteSchemaRequest{Schema: text})
	if err != nil {
		ts.t.Fatalf("WriteSchema: %v", err)
	}
	return resp.GetWrittenAt().GetToken()
}

// mustParse parses relationships in validation-file text form.
func mustParse(t *testing.T, texts ...string) []*pb.Relationship {
	t.Helper()
	out := make([]*pb.Relationship, len(texts))
	for i, text := range texts {
		r, err := rel.Parse(text)
		if err != nil {
			t.Fatalf("parse %q: %v", text, err)
		}
		out[i] = toProto(r)
	}
	return out
}

func toProto(r rel.Relationship) *pb.Relationship {
	out := &pb.Relationship{
		Resource: &pb.ObjectReference{ObjectType: r.Resource.Type, ObjectId: r.Resource.ID},
		Relation: r.Relation,
		Subject:  &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: r.Subject.Type, ObjectId: r.Subject.ID}, OptionalRelation: r.Subject.Relation},
	}
	if r.Caveat != nil {
		out.OptionalCaveat = &pb.ContextualizedCaveat{CaveatName: r.Caveat.Name, Context: mustStruct(r.Caveat.Context)}
	}
	if !r.Expiration.IsZero() {
		out.OptionalExpiresAt = timestamppb.New(r.Expiration)
	}
	return out
}

func mustStruct(m map[string]any) *structpb.Struct {
	if m == nil {
		return nil
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}

// relText renders a relationship from the API in validation-file form, for
// comparisons.
func relText(r *pb.Relationship) string {
	s := fmt.Sprintf("%s:%s#%s@%s:%s", r.GetResource().GetObjectType(), r.GetResource().GetObjectId(), r.GetRelation(),
		r.GetSubject().GetObject().GetObjectType(), r.GetSubject().GetObject().GetObjectId())
	if rl := r.GetSubject().GetOptionalRelation(); rl != "" {
		s += "#" + rl
	}
	if c := r.GetOptionalCaveat(); c != nil {
		s += "[" + c.GetCaveatName()
		if len(c.GetContext().GetFields()) > 0 {
			b, _ := json.Marshal(c.GetContext().AsMap())
			s += ":" + string(b)
		}
		s += "]"
	}
	if e := r.GetOptionalExpiresAt(); e != nil {
		s += "[expiration:" + e.AsTime().UTC().Format(time.RFC3339) + "]"
	}
	return s
}

func (ts *testServer) write(ops ...*pb.RelationshipUpdate) string {
	ts.t.Helper()
	resp, err := ts.rels.WriteRelationships(ts.ctx(), &pb.WriteRelationshipsRequest{Updates: ops})
	if err != nil {
		ts.t.Fatalf("WriteRelationships: %v", err)
	}
	return resp.GetWrittenAt().GetToken()
}

func update(op pb.RelationshipUpdate_Operation, rels ...*pb.Relationship) []*pb.RelationshipUpdate {
	out := make([]*pb.RelationshipUpdate, len(rels))
	for i, r := range rels {
		out[i] = &pb.RelationshipUpdate{Operation: op, Relationship: r}
	}
	return out
}

const (
	create = pb.RelationshipUpdate_OPERATION_CREATE
	touch  = pb.RelationshipUpdate_OPERATION_TOUCH
	del    = pb.RelationshipUpdate_OPERATION_DELETE
)

func obj(typ, id string) *pb.ObjectReference {
	return &pb.ObjectReference{ObjectType: typ, ObjectId: id}
}

func subj(typ, id string) *pb.SubjectReference {
	return &pb.SubjectReference{Object: obj(typ, id)}
}

func fresh(token string) *pb.Consistency {
	return &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: &pb.RevisionToken{Token: token}}}
}

func fullyConsistent() *pb.Consistency {
	return &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}}
}

// storeState is everything a request could have changed in the store.
type storeState struct {
	head   store.Revision
	schema string
	rels   []string
}

func (ts *testServer) state() storeState {
	ts.t.Helper()
	ctx := context.Background()
	head, err := ts.st.Head(ctx)
	if err != nil {
		ts.t.Fatal(err)
	}
	text, _, err := ts.st.ReadSchema(ctx, head)
	if err != nil {
		ts.t.Fatal(err)
	}
	s := storeState{head: head, schema: text}
	for r, err := range ts.st.Read(ctx, head, rel.Filter{}, nil) {
		if err != nil {
			ts.t.Fatal(err)
		}
		s.rels = append(s.rels, r.String())
	}
	return s
}

func (s storeState) equal(o storeState) bool {
	return s.head == o.head && s.schema == o.schema && strings.Join(s.rels, "\n") == strings.Join(o.rels, "\n")
}

// wantCode asserts a gRPC error's code and that its message mentions every
// fragment.
func wantCode(t *testing.T, err error, code codes.Code, fragments ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != code {
		t.Fatalf("got %v (code %v), want code %v", err, st.Code(), code)
	}
	for _, f := range fragments {
		if !strings.Contains(st.Message(), f) {
			t.Errorf("message %q does not mention %q", st.Message(), f)
		}
	}
}

// --- REST helpers ---

// restCall posts a JSON body and returns the status and the decoded body.
func (ts *testServer) restCall(path, key string, body any) (int, map[string]any) {
	ts.t.Helper()
	var buf []byte
	switch b := body.(type) {
	case string:
		buf = []byte(b)
	case []byte:
		buf = b
	default:
		var err error
		if buf, err = json.Marshal(body); err != nil {
			ts.t.Fatal(err)
		}
	}
	resp := ts.restRaw(http.MethodPost, path, key, bytes.NewReader(buf))
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatal(err)
	}
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			ts.t.Fatalf("%s: response is not a JSON object: %v: %s", path, err, raw)
		}
	}
	return resp.StatusCode, out
}

func (ts *testServer) restRaw(method, path, key string, body io.Reader) *http.Response {
	ts.t.Helper()
	req, err := http.NewRequestWithContext(ts.ctx(), method, ts.base+path, body)
	if err != nil {
		ts.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// restStream posts to a server-streaming route and returns each
// newline-delimited message's "result" (or fails on an "error").
func (ts *testServer) restStream(path string, body any) []map[string]any {
	ts.t.Helper()
	buf, err := json.Marshal(body)
	if err != nil {
		ts.t.Fatal(err)
	}
	resp := ts.restRaw(http.MethodPost, path, testKey, bytes.NewReader(buf))
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		ts.t.Fatalf("%s: HTTP %d: %s", path, resp.StatusCode, raw)
	}
	var out []map[string]any
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var msg map[string]any
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			ts.t.Fatalf("%s: bad stream line %q: %v", path, sc.Text(), err)
		}
		if e, ok := msg["error"]; ok {
			ts.t.Fatalf("%s: stream error %v", path, e)
		}
		out = append(out, msg["result"].(map[string]any))
	}
	if err := sc.Err(); err != nil {
		ts.t.Fatal(err)
	}
	return out
}

// jsonRel is a relationship in the REST JSON form.
func jsonRel(resType, resID, relation, subType, subID string) map[string]any {
	return map[string]any{
		"resource": map[string]any{"objectType": resType, "objectId": resID},
		"relation": relation,
		"subject":  map[string]any{"object": map[string]any{"objectType": subType, "objectId": subID}},
	}
}

func parseRel(text string) (*pb.Relationship, error) {
	r, err := rel.Parse(text)
	if err != nil {
		return nil, err
	}
	return toProto(r), nil
}

// restPost is a goroutine-safe REST call with the test key.
func restPost(ctx context.Context, url, body string) (int, map[string]any, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("decoding the response: %w", err)
	}
	return resp.StatusCode, out, nil
}
