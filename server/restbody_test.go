package server_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/apikey"
)

const restCheckBody = `{"consistency":{"fullyConsistent":true},"resource":{"objectType":"doc","objectId":"readme"},"permission":"view","subject":{"object":{"objectType":"user","objectId":"ann"}}}`

// TestRESTBodyIsOneJSONValue: bytes after the JSON body are refused (they
// were ignored, so the server answered a request other than the one sent),
// and JSON syntax errors show non-ASCII text as sent (encoding/json's
// wording showed "é" as "Ã").
func TestRESTBodyIsOneJSONValue(t *testing.T) {
	ts := startServer(t, nil)
	ts.seed()
	for _, c := range []struct {
		name, body string
		status     int
		want       []string
		not        string
	}{
		{"one object", restCheckBody, http.StatusOK, nil, ""},
		{"trailing whitespace", restCheckBody + "\n\t ", http.StatusOK, nil, ""},
		{"trailing garbage", restCheckBody + " trailing", http.StatusBadRequest, []string{`unexpected "trailing" after the JSON value at byte`, "exactly one JSON object"}, ""},
		{"two objects", restCheckBody + restCheckBody, http.StatusBadRequest, []string{"after the JSON value"}, ""},
		{"syntax error at é", `{"permission": é}`, http.StatusBadRequest, []string{`not valid JSON at byte 15: unexpected "é}"`}, "Ã"},
		{"unquoted string with é", `{"schema":"a == "é" }"}`, http.StatusBadRequest, []string{`unexpected "é\" }\"}"`}, "Ã"},
		{"not UTF-8", "{\"permission\": \"\xff\"}", http.StatusBadRequest, []string{"not valid UTF-8 at byte 16"}, ""},
		{"cut short", `{"permission": "vi`, http.StatusBadRequest, []string{"ends in the middle"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := ts.restCall("/v1/permissions/check", testKey, c.body)
			msg, _ := body["message"].(string)
			if code != c.status {
				t.Fatalf("HTTP %d (%s), want %d", code, msg, c.status)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if c.not != "" && strings.Contains(msg, c.not) {
				t.Errorf("message %q has %q", msg, c.not)
			}
		})
	}
}

// TestRESTRateLimitIs429: a scoped key over its rate gets 429 with
// Retry-After over REST (RESOURCE_EXHAUSTED with a RetryInfo over gRPC);
// other resource limits are not "too many requests": a body under the size
// limit whose message is over it (JSON numbers grow as protobuf) is 413,
// where it was 429.
func TestRESTRateLimitIs429(t *testing.T) {
	key, hash, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(path, []byte("keys:\n  - {name: slow, hash: "+hash+", scopes: [check], rate: 0.1, burst: 1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ring, err := apikey.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *server.Config) {
		c.Keys = ring
		c.Limits.MaxMessageBytes = 64 << 10
	})
	ts.seed()
	if code, body := ts.restCall("/v1/permissions/check", key, restCheckBody); code != http.StatusOK {
		t.Fatalf("first call: HTTP %d %v", code, body)
	}
	resp := ts.restRaw(http.MethodPost, "/v1/permissions/check", key, strings.NewReader(restCheckBody))
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("call over the rate: HTTP %d, want 429", resp.StatusCode)
	}
	if after, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || after < 1 || after > 10 {
		t.Errorf("Retry-After %q, want 1..10 seconds (the rate is one call per 10s)", resp.Header.Get("Retry-After"))
	}
	_, err = pb.NewPermissionServiceClient(ts.dial(key)).Check(ts.ctx(), &pb.CheckRequest{Consistency: fullyConsistent(), Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "ann")})
	wantCode(t, err, codes.ResourceExhausted, `key "slow" is over its rate limit`, "retry in")
	if len(status.Convert(err).Details()) == 0 {
		t.Error("no RetryInfo on the gRPC refusal")
	}

	// Under the body limit, over the message limit.
	var ctx strings.Builder
	ctx.WriteString(`{"consistency":{"fullyConsistent":true},"resource":{"objectType":"doc","objectId":"readme"},"permission":"view","subject":{"object":{"objectType":"user","objectId":"ann"}},"context":{`)
	for i := 0; ctx.Len() < 60<<10; i++ {
		fmt.Fprintf(&ctx, `"k%d":1,`, i)
	}
	body := strings.TrimSuffix(ctx.String(), ",") + "}}"
	code, out := ts.restCall("/v1/permissions/check", testKey, body)
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("a %d-byte body whose message is over the limit: HTTP %d %v, want 413", len(body), code, out)
	}
}

// TestErrorsCapEchoedInput: an error quoting what the caller sent quotes
// at most a bounded part of it, over gRPC and REST; the message still says
// what was wrong.
func TestErrorsCapEchoedInput(t *testing.T) {
	ts := startServer(t, nil)
	ts.seed()
	long := strings.Repeat("Q", 200_000)
	_, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Consistency: fullyConsistent(), Resource: obj(long, "x"), Permission: "view", Subject: subj("user", "ann")})
	wantCode(t, err, codes.InvalidArgument, "resource", "bytes)")
	if n := len(status.Convert(err).Message()); n > 2300 {
		t.Errorf("gRPC error message of %d bytes", n)
	}
	code, out := ts.restCall("/v1/permissions/check", testKey, fmt.Sprintf(`{"resource":{"objectType":%q,"objectId":"x"},"permission":"view","subject":{"object":{"objectType":"user","objectId":"ann"}}}`, long))
	msg, _ := out["message"].(string)
	if code != http.StatusBadRequest || len(msg) > 2300 || !strings.Contains(msg, "resource") {
		t.Errorf("REST: HTTP %d, message of %d bytes: %.300s", code, len(msg), msg)
	}
	// The gateway's own errors too: an unknown field's name.
	code, out = ts.restCall("/v1/permissions/check", testKey, fmt.Sprintf(`{%q: 1}`, long))
	msg, _ = out["message"].(string)
	if code != http.StatusBadRequest || len(msg) > 2300 || !strings.Contains(msg, "unknown field") {
		t.Errorf("REST unknown field: HTTP %d, message of %d bytes: %.300s", code, len(msg), msg)
	}
}

// TestFiltersNamingUnknownTypes: a read, export, delete or watch whose
// filter names a type or relation the schema lacks says so (it matched
// nothing, silently); a filter on a defined type still reads.
func TestFiltersNamingUnknownTypes(t *testing.T) {
	ts := startServer(t, nil)
	token := ts.seed()
	read := func(f *pb.RelationshipFilter) error {
		stream, err := ts.rels.ReadRelationships(ts.ctx(), &pb.ReadRelationshipsRequest{Consistency: fresh(token), Filter: f})
		if err != nil {
			return err
		}
		for {
			if _, err := stream.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	export := func(f *pb.RelationshipFilter) error {
		stream, err := ts.rels.ExportRelationships(ts.ctx(), &pb.ExportRelationshipsRequest{OptionalFilter: f})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	watch := func(f *pb.RelationshipFilter) error {
		stream, err := ts.rels.Watch(ts.ctx(), &pb.WatchRequest{OptionalFilters: []*pb.RelationshipFilter{{ResourceType: "doc"}, f}})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	}
	del := func(f *pb.RelationshipFilter) error {
		_, err := ts.rels.DeleteRelationships(ts.ctx(), &pb.DeleteRelationshipsRequest{Filter: f})
		return err
	}
	for _, c := range []struct {
		name     string
		call     func(*pb.RelationshipFilter) error
		filter   *pb.RelationshipFilter
		fragment string
	}{
		{"read: unknown resource type", read, &pb.RelationshipFilter{ResourceType: "widget"}, `filter.resource_type: type "widget" is not defined in the schema`},
		{"read: unknown relation", read, &pb.RelationshipFilter{ResourceType: "doc", OptionalRelation: "editor"}, `filter.optional_relation: "doc" has no relation "editor"`},
		{"read: unknown subject type", read, &pb.RelationshipFilter{OptionalSubjectFilter: &pb.SubjectFilter{SubjectType: "robot"}}, `filter.optional_subject_filter.subject_type: type "robot"`},
		{"export: unknown resource type", export, &pb.RelationshipFilter{ResourceType: "widget"}, `optional_filter.resource_type: type "widget"`},
		{"watch: unknown resource type", watch, &pb.RelationshipFilter{ResourceType: "widget"}, `optional_filters[1].resource_type: type "widget"`},
		{"delete: unknown resource type", del, &pb.RelationshipFilter{ResourceType: "widget"}, `filter.resource_type: type "widget"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantCode(t, c.call(c.filter), codes.InvalidArgument, c.fragment, "would match nothing")
		})
	}
	if err := read(&pb.RelationshipFilter{ResourceType: "doc", OptionalRelation: "viewer"}); err != nil {
		t.Fatalf("a filter on defined names: %v", err)
	}
}
