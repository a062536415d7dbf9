package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
)

// bounded is how long a test waits for the server to cut a hostile
// connection whose limit is a fraction of a second: far below the
// defaults (and the unbounded waits before them), far above any scheduling
// delay.
const bounded = 10 * time.Second

// rawDial opens a plain TCP connection to addr.
func rawDial(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed reads c until the server closes it, failing the test when
// that takes longer than bounded. It returns what was read.
func waitClosed(t *testing.T, c net.Conn, what string) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(bounded))
	var b strings.Builder
	_, err := io.Copy(&b, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the server kept the connection open for %s (read %.300q)", what, bounded, b.String())
	}
	return b.String()
}

// trickle writes chunks to c one at a time, a pause apart, until they are
// written or c fails (closed by the server).
func trickle(c net.Conn, pause time.Duration, chunks ...string) {
	go func() {
		for _, ch := range chunks {
			if _, err := io.WriteString(c, ch); err != nil {
				return
			}
			time.Sleep(pause)
		}
	}()
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// TestSlowClientsAreCut drives slowloris-style clients at a running server
// over real sockets: each holds a connection open by sending too slowly or
// not at all, and each must be cut within its limit (a fraction of a
// second here) instead of holding a descriptor and a goroutine for as long
// as it likes. None of them needs a key.
func TestSlowClientsAreCut(t *testing.T) {
	const limit = 300 * time.Millisecond
	ts := startServer(t, func(c *server.Config) {
		c.Transport = server.TransportLimits{HandshakeTimeout: limit, BodyTimeout: limit, IdleTimeout: limit}
	})
	httpAddr, grpcAddr := ts.srv.HTTPAddr(), ts.srv.GRPCAddr()
	// A pause per chunk, with 100 chunks: the whole send would take 10 s.
	const pause = 100 * time.Millisecond
	for _, tc := range []struct {
		name string
		addr net.Addr
		send func(c net.Conn)
		// want is in the server's answer, when it answers before closing.
		want string
	}{
		{name: "HTTP connection that sends nothing", addr: httpAddr, send: func(net.Conn) {}},
		{name: "HTTP headers trickled", addr: httpAddr, send: func(c net.Conn) {
			trickle(c, pause, append([]string{"POST /v1/permissions/check HTTP/1.1\r\nHost: x\r\n"}, repeat("X-Slow: a\r\n", 100)...)...)
		}},
		{name: "HTTP body trickled with a valid key", addr: httpAddr, want: "HTTP/1.1 400", send: func(c net.Conn) {
			trickle(c, pause, append([]string{"POST /v1/permissions/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testKey +
				"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"}, repeat(" ", 100)...)...)
		}},
		{name: "HTTP keep-alive connection left idle", addr: httpAddr, want: "HTTP/1.1 200", send: func(c net.Conn) {
			io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		}},
		{name: "gRPC connection that sends nothing", addr: grpcAddr, send: func(net.Conn) {}},
		{name: "gRPC preface trickled", addr: grpcAddr, send: func(c net.Conn) {
			trickle(c, pause, strings.Split(http2.ClientPreface, "")...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, tc.addr)
			tc.send(c)
			if got := waitClosed(t, c, tc.name); !strings.HasPrefix(got, tc.want) {
				t.Errorf("the server answered %.200q before closing; want %q first", got, tc.want)
			}
		})
	}
	// Good clients are still served.
	if _, err := healthpb.NewHealthClient(ts.conn).Check(ts.ctx(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("gRPC health after the slow clients: %v", err)
	}
	if st, _ := ts.restCall("/v1/schema/read", testKey, map[string]any{}); st != http.StatusOK && st != http.StatusNotFound {
		t.Errorf("REST after the slow clients: HTTP %d", st)
	}
}

// TestUnauthenticatedBodyIsNotRead: a call without a valid key is refused
// as soon as its headers arrive, over REST and gRPC, so it cannot make the
// server receive a 4 MiB body (or wait for one). The test sends headers
// announcing a body and then nothing: the refusal must come regardless. A
// valid key's call, sent the same way, is left waiting for its body, which
// shows that the refusal is not an accident of the test's request.
func TestUnauthenticatedBodyIsNotRead(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(c *server.Config) { c.Audit, c.Transport.BodyTimeout = rec, time.Hour })
	restHead := func(key string) string {
		return "POST /v1/permissions/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
			"\r\nContent-Type: application/json\r\nContent-Length: 4194304\r\n\r\n"
	}
	t.Run("REST", func(t *testing.T) {
		c := rawDial(t, ts.srv.HTTPAddr())
		io.WriteString(c, restHead("not-the-key"))
		c.SetReadDeadline(time.Now().Add(bounded))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to a call without a valid key whose body never comes: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Www-Authenticate") == "" || !resp.Close {
			t.Errorf("answer: HTTP %d, WWW-Authenticate %q, close %v; want 401 with a challenge, closing", resp.StatusCode, resp.Header.Get("Www-Authenticate"), resp.Close)
		}
		waitClosed(t, c, "after refusing the call")
		if ev := one(t, rec.take()); ev.Code != codes.Unauthenticated.String() || ev.Transport != "rest" || ev.Operation != audit.OpCheck {
			t.Errorf("refused call audited as %+v", ev)
		}

		// A small body, which the server would otherwise drain after its
		// answer to keep the connection, trickled: not read either.
		small := rawDial(t, ts.srv.HTTPAddr())
		trickle(small, 100*time.Millisecond, append([]string{strings.Replace(restHead("not-the-key"), "4194304", "100", 1)}, repeat(" ", 100)...)...)
		if got := waitClosed(t, small, "a refused call trickling a small body"); !strings.HasPrefix(got, "HTTP/1.1 401") {
			t.Errorf("answer to a refused call trickling a small body: %.100q", got)
		}
		rec.take()

		ok := rawDial(t, ts.srv.HTTPAddr())
		io.WriteString(ok, restHead(testKey))
		ok.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := ok.Read(make([]byte, 1)); n > 0 || !isTimeout(err) {
			t.Errorf("with a valid key the server did not wait for the body: read %d bytes, %v", n, err)
		}
	})
	t.Run("gRPC", func(t *testing.T) {
		// A stream opened on a unary method sends its headers and, until
		// SendMsg, no message.
		open := func(conn *grpc.ClientConn, timeout time.Duration) error {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			s, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, pb.PermissionService_Check_FullMethodName)
			if err != nil {
				return err
			}
			return s.RecvMsg(new(pb.CheckResponse))
		}
		for _, key := range []string{"", "not-the-key"} {
			wantCode(t, open(ts.dial(key), bounded), codes.Unauthenticated)
			if ev := one(t, rec.take()); ev.Code != codes.Unauthenticated.String() || ev.Transport != "grpc" || ev.Source == "" || ev.Operation != audit.OpCheck {
				t.Errorf("key %q: refused call audited as %+v", key, ev)
			}
		}
		wantCode(t, open(ts.conn, 300*time.Millisecond), codes.DeadlineExceeded)
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestConnectionCap: connections over a listener's cap are closed on
// accept, the other listener keeps serving, and a freed slot is taken by
// the next client.
func TestConnectionCap(t *testing.T) {
	const max = 3
	ts := startServer(t, func(c *server.Config) {
		c.Transport = server.TransportLimits{MaxConnections: max, HandshakeTimeout: time.Minute}
	})
	for _, tc := range []struct {
		name        string
		full, other net.Addr
	}{
		{"http", ts.srv.HTTPAddr(), ts.srv.GRPCAddr()},
		{"grpc", ts.srv.GRPCAddr(), ts.srv.HTTPAddr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var held []net.Conn
			for range max {
				held = append(held, rawDial(t, tc.full))
			}
			// The test's own gRPC connection holds a slot already.
			if tc.name == "grpc" {
				held[max-1].Close()
				held = held[:max-1]
			}
			over := rawDial(t, tc.full)
			if got := waitClosed(t, over, "a connection over the cap"); got != "" {
				t.Errorf("a connection over the cap got %q", got)
			}
			// The other listener is not affected.
			if tc.name == "http" {
				if _, err := healthpb.NewHealthClient(ts.conn).Check(ts.ctx(), &healthpb.HealthCheckRequest{}); err != nil {
					t.Errorf("gRPC with the HTTP listener full: %v", err)
				}
			} else if resp, err := http.Get("http://" + tc.other.String() + "/healthz"); err != nil {
				t.Errorf("HTTP with the gRPC listener full: %v", err)
			} else {
				resp.Body.Close()
			}
			held[0].Close()
			waitFor(t, "a freed slot to be taken", func() bool {
				c, err := net.Dial("tcp", tc.full.String())
				if err != nil {
					return false
				}
				defer c.Close()
				if tc.name == "http" {
					io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
				} else {
					io.WriteString(c, http2.ClientPreface)
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				n, _ := c.Read(make([]byte, 1))
				return n > 0
			})
			for _, c := range held[1:] {
				c.Close()
			}
		})
	}
	resp, err := http.Get(ts.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range []string{"http", "grpc"} {
		if !strings.Contains(string(body), fmt.Sprintf(`mandate_connections_refused_total{listener=%q}`, l)) {
			t.Errorf("/metrics does not count refused %s connections", l)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bounded)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", bounded, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGRPCConnectionLimits speaks HTTP/2 to the gRPC listener directly: the
// server announces its stream and header caps, and a client pinging more
// often than the keepalive policy allows is told to go away.
func TestGRPCConnectionLimits(t *testing.T) {
	ts := startServer(t, func(c *server.Config) {
		c.Transport = server.TransportLimits{MaxConcurrentStreams: 7, MaxHeaderBytes: 8 << 10, KeepaliveMinTime: time.Minute}
	})
	c := rawDial(t, ts.srv.GRPCAddr())
	c.SetDeadline(time.Now().Add(bounded))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	settings := map[http2.SettingID]uint32{}
	for len(settings) == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's settings: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			sf.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
			fr.WriteSettingsAck()
		}
	}
	if got := settings[http2.SettingMaxConcurrentStreams]; got != 7 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want 7", got)
	}
	if got := settings[http2.SettingMaxHeaderListSize]; got != 8<<10 {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want %d", got, 8<<10)
	}
	for i := range 10 {
		if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			break // closed already
		}
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY after 10 pings in a row: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeEnhanceYourCalm || !strings.Contains(string(g.DebugData()), "too_many_pings") {
				t.Errorf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", g.ErrCode, g.DebugData())
			}
			return
		}
	}
}

// TestStreamsOverTheCapWait: with two streams allowed per connection, a
// third call on the connection waits (here until its deadline) while two
// watches are open, and proceeds once one ends.
func TestStreamsOverTheCapWait(t *testing.T) {
	ts := startServer(t, func(c *server.Config) { c.Transport.MaxConcurrentStreams = 2 })
	ts.writeSchema(testSchema)
	watch := func() (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		// The stream takes one of the connection's two as it opens (the
		// client knows the cap from the server's settings).
		_, err := ts.rels.Watch(ctx, &pb.WatchRequest{})
		return cancel, err
	}
	stop1, err := watch()
	if err != nil {
		t.Fatal(err)
	}
	defer stop1()
	stop2, err := watch()
	if err != nil {
		t.Fatal(err)
	}
	defer stop2()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = ts.schema.ReadSchema(ctx, &pb.ReadSchemaRequest{})
	cancel()
	wantCode(t, err, codes.DeadlineExceeded)
	stop1()
	if _, err := ts.schema.ReadSchema(ts.ctx(), &pb.ReadSchemaRequest{}); status.Code(err) != codes.OK {
		t.Errorf("ReadSchema once a stream is free: %v", err)
	}
}

// TestRESTWatchOutlivesTheBodyTimeout: the body deadline ends with the
// body, so a REST Watch (a long response to a short body) keeps streaming
// past it.
func TestRESTWatchOutlivesTheBodyTimeout(t *testing.T) {
	const limit = 200 * time.Millisecond
	ts := startServer(t, func(c *server.Config) { c.Transport.BodyTimeout = limit })
	ts.writeSchema(testSchema)
	req, err := http.NewRequestWithContext(ts.ctx(), http.MethodPost, ts.base+"/v1/watch", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	// The gateway answers with the first event, so the call returns once
	// the write below is made.
	type answer struct {
		resp *http.Response
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		got <- answer{resp, err}
	}()
	time.Sleep(5 * limit)
	ts.write(update(touch, mustParse(t, "doc:late#viewer@user:ann")...)...)
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	defer a.resp.Body.Close()
	line, err := bufio.NewReader(a.resp.Body).ReadString('\n')
	if err != nil || !strings.Contains(line, "late") {
		t.Fatalf("REST watch after %s, past the body timeout: %q, %v", 5*limit, line, err)
	}
}
