package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandate-authz/mandate/mcpgateway"
	"github.com/mandate-authz/mandate/mcpgateway/oidctest"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// bearerTransport adds an access token to every request.
type bearerTransport string

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(b))
	return http.DefaultTransport.RoundTrip(r)
}

// TestMCPGatewayCommand runs `mandate serve` and `mandate mcp-gateway` in
// process, with an OIDC issuer and a go-sdk MCP server, and calls a tool
// through the gateway: allowed for the owner's agent, denied elsewhere.
func TestMCPGatewayCommand(t *testing.T) {
	served := startServe(t, "--datastore-engine", "memory")
	if _, err := pb.NewSchemaServiceClient(served.conn).WriteSchema(served.ctx, &pb.WriteSchemaRequest{Schema: `definition user {}
definition agent {
	relation acts_for: user
}
definition calendar {
	relation owner: user | agent:*
	permission read = owner
}`}); err != nil {
		t.Fatal(err)
	}
	var ups []*pb.RelationshipUpdate
	for _, r := range [][4]string{{"calendar", "alice", "owner", "user:alice"}, {"calendar", "alice", "owner", "agent:*"}, {"agent", "helper", "acts_for", "user:alice"}} {
		typ, id, _ := strings.Cut(r[3], ":")
		ups = append(ups, &pb.RelationshipUpdate{Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: &pb.Relationship{
			Resource: &pb.ObjectReference{ObjectType: r[0], ObjectId: r[1]}, Relation: r[2],
			Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: typ, ObjectId: id}}}})
	}
	if _, err := pb.NewRelationshipServiceClient(served.conn).WriteRelationships(served.ctx, &pb.WriteRelationshipsRequest{Updates: ups}); err != nil {
		t.Fatal(err)
	}

	issSrv := httptest.NewServer(nil)
	defer issSrv.Close()
	iss, err := oidctest.New(issSrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	issSrv.Config.Handler = iss.Handler()

	srv := mcp.NewServer(&mcp.Implementation{Name: "cal", Version: "1"}, nil)
	type args struct {
		CalendarID string `json:"calendar_id"`
	}
	mcp.AddTool(srv, &mcp.Tool{Name: "read_calendar"}, func(_ context.Context, _ *mcp.CallToolRequest, a args) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "events of " + a.CalendarID}}}, nil, nil
	})
	up := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: true}))
	defer up.Close()

	mapping := filepath.Join(t.TempDir(), "mapping.yaml")
	os.WriteFile(mapping, []byte("tools:\n  read_calendar:\n    check: calendar:{calendar_id}#read\n    list: calendar:alice#read\n"), 0o600)

	logs := &syncBuffer{}
	root := newRootCommand()
	root.SetArgs([]string{"mcp-gateway", "--listen", "127.0.0.1:0", "--upstream", up.URL, "--issuer", iss.URL, "--mapping", mapping,
		"--endpoint", served.conn.Target(), "--token", serveKey, "--insecure", "--cache-ttl", "1m"})
	root.SetOut(logs)
	root.SetErr(logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mcp-gateway: %v\n%s", err, logs.String())
		}
	}()
	listening := regexp.MustCompile(`resource=(http://\S+/mcp)`)
	var resource string
	for deadline := time.Now().Add(10 * time.Second); resource == ""; time.Sleep(10 * time.Millisecond) {
		if m := listening.FindStringSubmatch(logs.String()); m != nil {
			resource = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("mcp-gateway did not start:\n%s", logs.String())
		}
	}

	tok, _ := iss.Mint(map[string]any{"sub": "alice", "client_id": "helper", "aud": resource})
	c := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil)
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	cs, err := c.Connect(cctx, &mcp.StreamableClientTransport{Endpoint: resource, HTTPClient: &http.Client{Transport: bearerTransport(tok)}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, logs.String())
	}
	defer cs.Close()
	res, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "read_calendar", Arguments: map[string]any{"calendar_id": "alice"}})
	if err != nil || res.Content[0].(*mcp.TextContent).Text != "events of alice" {
		t.Fatalf("allowed call: %v %v", res, err)
	}
	_, err = cs.CallTool(cctx, &mcp.CallToolParams{Name: "read_calendar", Arguments: map[string]any{"calendar_id": "bob"}})
	var je *jsonrpc.Error
	if !errors.As(err, &je) || je.Code != mcpgateway.CodeDenied {
		t.Fatalf("denied call: %v", err)
	}
}

func TestMCPGatewayCommandRefusesBadFlags(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("tools:\n  read_calendar:\n    check: calendar:{calendar_id}\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--issuer", "http://x", "--mapping", bad}, "--upstream is required"},
		{[]string{"--upstream", "ftp://x", "--issuer", "http://x", "--mapping", bad}, "expected an http(s) URL"},
		{[]string{"--upstream", "http://x/mcp", "--issuer", "http://x", "--mapping", bad}, "mapping line 3: \"calendar:{calendar_id}\": expected type:id#permission"},
		{[]string{"--upstream", "http://x/mcp", "--issuer", "http://x", "--mapping", filepath.Join(dir, "none.yaml")}, "no such file"},
		{[]string{"--upstream", "http://x/mcp", "--issuer", "http://x", "--mapping", bad, "--approval-url", "127.0.0.1:8443/ui/"}, "--approval-url \"127.0.0.1:8443/ui/\": expected the http(s) URL of Mandate's inbox"},
	} {
		var out syncBuffer
		code := run(append([]string{"mcp-gateway"}, tc.args...), &out, &out)
		if code != 1 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%v: exit %d, output %q, want %q", tc.args, code, out.String(), tc.want)
		}
	}
}
