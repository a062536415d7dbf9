package mcpgateway_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/examples/mcp/calendar"
	"github.com/mandate-authz/mandate/mcpgateway"
	"github.com/mandate-authz/mandate/mcpgateway/oidctest"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/escalation"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const mandateKey = "gateway-test-key"

// mappingFile is the README's mapping file for the demo calendar server.
const mappingFile = "../examples/mcp/mapping.yaml"

// mandateServer is a real Mandate server on loopback with a queryable
// audit trail.
type mandateServer struct {
	srv   *server.Server
	conn  *grpc.ClientConn
	rels  pb.RelationshipServiceClient
	audit pb.AuditServiceClient
	stop  func()
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

// startMandateWith starts Mandate holding agents' checks by the escalation
// rules esc (nil: none).
func startMandateWith(t testing.TB, esc *escalation.Escalator) *mandateServer {
	t.Helper()
	sink, err := audit.OpenFileSink(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	trail, err := audit.New(context.Background(), audit.Options{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	st := memory.New()
	key, err := capability.GenerateKey("k-gateway", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(st, engine.New(), server.Config{
		GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{mandateKey}, PresharedKeyNames: []string{"mcp-gateway"},
		ShutdownGracePeriod: 5 * time.Second, Audit: trail, CapabilityKeys: keys, Escalation: esc,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(func() {
		stop()
		trail.Close(context.Background())
		st.Close()
	})
	for deadline := time.Now().Add(5 * time.Second); !srv.Ready(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("mandate did not become ready")
		}
	}
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(mandateKey)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	m := &mandateServer{srv: srv, stop: stop, conn: conn, rels: pb.NewRelationshipServiceClient(conn), audit: pb.NewAuditServiceClient(conn)}
	if _, err := pb.NewSchemaServiceClient(conn).WriteSchema(context.Background(), &pb.WriteSchemaRequest{Schema: calendar.Schema}); err != nil {
		t.Fatal(err)
	}
	m.write(t, pb.RelationshipUpdate_OPERATION_TOUCH, calendar.Relationships...)
	return m
}

func (m *mandateServer) write(t testing.TB, op pb.RelationshipUpdate_Operation, texts ...string) {
	t.Helper()
	var ups []*pb.RelationshipUpdate
	for _, text := range texts {
		r, err := rel.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		ups = append(ups, &pb.RelationshipUpdate{Operation: op, Relationship: &pb.Relationship{
			Resource: &pb.ObjectReference{ObjectType: r.Resource.Type, ObjectId: r.Resource.ID},
			Relation: r.Relation,
			Subject:  &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: r.Subject.Type, ObjectId: r.Subject.ID}, OptionalRelation: r.Subject.Relation},
		}})
	}
	if _, err := m.rels.WriteRelationships(context.Background(), &pb.WriteRelationshipsRequest{Updates: ups}); err != nil {
		t.Fatalf("write %v: %v", texts, err)
	}
}

// exchange is one HTTP request and response seen at a tap.
type exchange struct {
	method, session string
	identity        string // what IdentityFromContext said (in-process only)
	reqBody         []byte
	status          int
	respBody        []byte
}

// recorder keeps the exchanges it sees.
type recorder struct {
	mu  sync.Mutex
	all []*exchange
}

func (r *recorder) add(e *exchange) {
	r.mu.Lock()
	r.all = append(r.all, e)
	r.mu.Unlock()
}

// find returns the exchanges whose request body contains s.
func (r *recorder) find(s string) []*exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*exchange
	for _, e := range r.all {
		if bytes.Contains(e.reqBody, []byte(s)) {
			out = append(out, e)
		}
	}
	return out
}

// upstreamRecorder wraps the MCP server's handler and records every byte
// it writes.
type upstreamRecorder struct {
	recorder
	next http.Handler
}

type teeWriter struct {
	http.ResponseWriter
	status int
	buf    bytes.Buffer
}

func (w *teeWriter) WriteHeader(s int) { w.status = s; w.ResponseWriter.WriteHeader(s) }
func (w *teeWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	w.buf.Write(p)
	return w.ResponseWriter.Write(p)
}
func (w *teeWriter) Flush()                      { http.NewResponseController(w.ResponseWriter).Flush() }
func (w *teeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (u *upstreamRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	e := &exchange{method: r.Method, session: r.Header.Get("Mcp-Session-Id"), reqBody: body}
	if id, ok := mcpgateway.IdentityFromContext(r.Context()); ok {
		e.identity = strings.Join(id.ChainStrings(), ",")
	}
	// What reached the MCP server: the client's token must not.
	if r.Header.Get("Authorization") != "" || r.Header.Get(mcpgateway.CapabilityHeader) != "" {
		e.reqBody = append([]byte("LEAKED-CREDENTIAL "), body...)
	}
	tw := &teeWriter{ResponseWriter: w}
	u.next.ServeHTTP(tw, r)
	e.status, e.respBody = tw.status, tw.buf.Bytes()
	u.add(e)
}

// clientTransport keeps a connection per concurrent session (the default
// transport keeps two idle per host).
var clientTransport = func() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	return tr
}()

// clientTap is the client side's transport: it adds the token (and the
// capability token, when set) and records every response as received.
type clientTap struct {
	recorder
	token      func() string
	capability func() string
}

func (c *clientTap) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	if tok := c.token(); tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	if c.capability != nil {
		if tok := c.capability(); tok != "" {
			r.Header.Set(mcpgateway.CapabilityHeader, tok)
		}
	}
	resp, err := clientTransport.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	e := &exchange{method: r.Method, reqBody: body, status: resp.StatusCode}
	resp.Body = &teeBody{ReadCloser: resp.Body, done: func(b []byte) { e.respBody = b; c.add(e) }}
	return resp, nil
}

type teeBody struct {
	io.ReadCloser
	mu   sync.Mutex // some clients Close while another goroutine reads
	buf  bytes.Buffer
	once sync.Once
	done func([]byte)
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	t.mu.Lock()
	t.buf.Write(p[:n])
	t.mu.Unlock()
	if err != nil {
		t.finish()
	}
	return n, err
}

func (t *teeBody) Close() error {
	t.finish()
	return t.ReadCloser.Close()
}

func (t *teeBody) finish() {
	t.once.Do(func() {
		t.mu.Lock()
		b := bytes.Clone(t.buf.Bytes())
		t.mu.Unlock()
		t.done(b)
	})
}

// env is the whole chain: an OIDC issuer, Mandate, the go-sdk MCP server
// and the gateway in front of it.
type env struct {
	t        testing.TB
	mandate  *mandateServer
	issuer   *oidctest.Issuer
	upstream *upstreamRecorder
	direct   string // the MCP server's URL
	gw       *mcpgateway.Gateway
	resource string // the gateway's MCP endpoint (its resource URI)
}

type envOptions struct {
	stateless bool          // the MCP server serves 2026-07-28 (stateless)
	cacheTTL  time.Duration // the gateway's decision cache
	json      bool          // the MCP server answers with JSON bodies, not SSE
	inProcess bool          // Middleware wraps the go-sdk handler: no proxy
	// escalation holds agents' checks by these rules (YAML); approvalURL
	// is the gateway's inbox base.
	escalation, approvalURL string
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	var esc *escalation.Escalator
	if o.escalation != "" {
		rules, err := escalation.Parse("rules.yaml", []byte(o.escalation))
		if err != nil {
			t.Fatal(err)
		}
		esc = escalation.New(rules, escalation.Options{})
	}
	e := &env{t: t, mandate: startMandateWith(t, esc)}

	issSrv := httptest.NewUnstartedServer(nil)
	issSrv.Start()
	t.Cleanup(issSrv.Close)
	iss, err := oidctest.New(issSrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	issSrv.Config.Handler = iss.Handler()
	e.issuer = iss

	srv := calendar.NewServer()
	e.upstream = &upstreamRecorder{next: mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: o.stateless, JSONResponse: o.json})}
	up := httptest.NewServer(e.upstream)
	t.Cleanup(up.Close)
	e.direct = up.URL + "/mcp"

	text, err := os.ReadFile(mappingFile)
	if err != nil {
		t.Fatal(err)
	}
	mapping, err := mcpgateway.ParseMapping(text)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.resource = "http://" + ln.Addr().String() + "/mcp"
	gw, err := mcpgateway.New(context.Background(), mcpgateway.Config{
		Resource: e.resource, Issuer: iss.URL, Mapping: mapping, Mandate: e.mandate.conn, CacheTTL: o.cacheTTL,
		ApprovalURL: o.approvalURL,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	e.gw = gw
	upURL, _ := url.Parse(e.direct)
	var next http.Handler = mcpgateway.NewProxy(upURL, nil)
	if o.inProcess {
		next = e.upstream
	}
	gs := &httptest.Server{Listener: ln, Config: &http.Server{Handler: gw.Middleware(next)}}
	gs.Start()
	t.Cleanup(gs.Close)
	if o.cacheTTL > 0 {
		e.waitWatch()
	}
	return e
}

// waitWatch waits until the gateway follows Mandate's Watch stream, so that
// decisions are cached from the start.
func (e *env) waitWatch() {
	e.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if e.gw.CacheReady() {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("the gateway did not start following Mandate's Watch stream")
		}
	}
}

// token mints an access token for the gateway.
func (e *env) token(sub, client string, extra map[string]any) string {
	e.t.Helper()
	claims := map[string]any{"sub": sub, "client_id": client, "aud": e.resource, "scope": "mcp"}
	for k, v := range extra {
		claims[k] = v
	}
	tok, err := e.issuer.Mint(claims)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// goClient connects the go-sdk client through the gateway (or directly) at
// a protocol version ("" for the newest).
func (e *env) goClient(endpoint, token, version string) (*mcp.ClientSession, *clientTap) {
	e.t.Helper()
	return e.goClientWith(&clientTap{token: func() string { return token }}, endpoint, version)
}

// goClientWith connects the go-sdk client through tap.
func (e *env) goClientWith(tap *clientTap, endpoint, version string) (*mcp.ClientSession, *clientTap) {
	e.t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "test-client", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(context.Context, *mcp.ProgressNotificationClientRequest) {},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var opts *mcp.ClientSessionOptions
	if version != "" {
		opts = &mcp.ClientSessionOptions{ProtocolVersion: version}
	}
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: &http.Client{Transport: tap}, MaxRetries: -1}, opts)
	if err != nil {
		e.t.Fatalf("connect to %s: %v", endpoint, err)
	}
	e.t.Cleanup(func() { cs.Close() })
	return cs, tap
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func toolNames(res *mcp.ListToolsResult) string {
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
	}
	return strings.Join(names, ",")
}
