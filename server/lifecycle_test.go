package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store/memory"
)

func TestHealthReflectionAndMetrics(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ts.ctx()
	anon := ts.dial("")

	// Health and reflection need no key.
	h, err := healthpb.NewHealthClient(anon).Check(ctx, &healthpb.HealthCheckRequest{Service: "mandate.v1.PermissionService"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", h, err)
	}
	refl, err := reflectionpb.NewServerReflectionClient(anon).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := refl.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var services []string
	for _, s := range r.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	for _, want := range []string{"mandate.v1.PermissionService", "mandate.v1.RelationshipService", "mandate.v1.SchemaService"} {
		if !strings.Contains(strings.Join(services, " "), want) {
			t.Errorf("reflection lists %v, lacking %s", services, want)
		}
	}

	// Decisions are counted by outcome, requests by transport.
	token := ts.seed()
	checkDecision(t, ts, fresh(token), "doc:readme", "view", "user:ann")
	checkDecision(t, ts, fresh(token), "doc:readme", "view", "user:ann")
	checkDecision(t, ts, fresh(token), "doc:readme", "view", "user:zed")
	checkDecision(t, ts, fresh(token), "doc:readme", "view", "user:carl")
	ts.restCall("/v1/permissions/check", testKey, map[string]any{
		"resource": map[string]any{"objectType": "doc", "objectId": "readme"}, "permission": "view",
		"subject":     map[string]any{"object": map[string]any{"objectType": "user", "objectId": "ann"}},
		"consistency": map[string]any{"atLeastAsFresh": map[string]any{"token": token}},
	})
	resp := ts.restRaw(http.MethodGet, "/metrics", "", nil)
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	metrics := string(raw)
	for _, want := range []string{
		`mandate_check_decisions_total{decision="allowed"} 3`,
		`mandate_check_decisions_total{decision="denied"} 1`,
		`mandate_check_decisions_total{decision="conditional"} 1`,
		`mandate_requests_total{code="OK",method="/mandate.v1.PermissionService/Check",transport="grpc"} 4`,
		`mandate_requests_total{code="OK",method="/mandate.v1.PermissionService/Check",transport="rest"} 1`,
		`mandate_request_duration_seconds_count{method="/mandate.v1.PermissionService/Check",transport="grpc"} 4`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestSeveralKeys(t *testing.T) {
	ts := startServer(t, func(c *server.Config) { c.PresharedKeys = []string{"first-key", "second-key"} })
	for _, key := range []string{"first-key", "second-key"} {
		c := pb.NewSchemaServiceClient(ts.dial(key))
		_, err := c.ReadSchema(ts.ctx(), &pb.ReadSchemaRequest{})
		wantCode(t, err, codes.NotFound) // authenticated: the schema is simply missing
	}
	_, err := pb.NewSchemaServiceClient(ts.dial(testKey)).ReadSchema(ts.ctx(), &pb.ReadSchemaRequest{})
	wantCode(t, err, codes.Unauthenticated)
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  server.Config
		want string
	}{
		{"no key", server.Config{GRPCAddr: "127.0.0.1:0"}, "preshared key is required"},
		{"empty key", server.Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{"a", " "}}, "preshared key 2 of 2 is empty"},
		{"half TLS", server.Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{"k"}, GRPCTLSCertPath: "cert.pem"}, "both a certificate and a key"},
		{"missing TLS files", server.Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{"k"}, HTTPAddr: "127.0.0.1:0", HTTPTLSCertPath: "/nonexistent/c.pem", HTTPTLSKeyPath: "/nonexistent/k.pem"}, "/nonexistent/c.pem"},
		{"bad address", server.Config{GRPCAddr: "127.0.0.1:notaport", PresharedKeys: []string{"k"}}, "notaport"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := server.New(memory.New(), engine.New(), c.cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("New = %v, want an error mentioning %q", err, c.want)
			}
		})
	}
}

// TestGracefulShutdown: cancelling Run stops new work, turns readiness off,
// lets an in-flight import finish, and returns nil.
func TestGracefulShutdown(t *testing.T) {
	ts := startServer(t, nil)
	ts.writeSchema(testSchema)
	ctx := ts.ctx()

	imp, err := ts.rels.ImportRelationships(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := imp.Send(&pb.ImportRelationshipsRequest{Relationships: mustParse(t, "doc:a#viewer@user:ann")}); err != nil {
		t.Fatal(err)
	}
	// Make sure the first batch is committed (the call is in flight) before
	// shutting down.
	for ts.state().head < 2 {
		time.Sleep(time.Millisecond)
	}

	done := make(chan error, 1)
	go func() { done <- ts.shutdown() }()
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("still ready after shutdown began")
		}
		time.Sleep(time.Millisecond)
	}
	// New connections are refused once the listener closes.
	for {
		conn, err := net.DialTimeout("tcp", ts.srv.GRPCAddr().String(), time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the gRPC listener still accepts connections during shutdown")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The in-flight import finishes.
	if err := imp.Send(&pb.ImportRelationshipsRequest{Relationships: mustParse(t, "doc:b#viewer@user:ann")}); err != nil {
		t.Fatalf("sending on the in-flight import: %v", err)
	}
	resp, err := imp.CloseAndRecv()
	if err != nil {
		t.Fatalf("in-flight import cut off: %v", err)
	}
	if resp.GetNumLoaded() != 2 {
		t.Errorf("in-flight import loaded %d, want 2", resp.GetNumLoaded())
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}

func TestRequestTimeout(t *testing.T) {
	ts := startServer(t, func(c *server.Config) { c.Limits.RequestTimeout = time.Nanosecond })
	_, err := ts.schema.WriteSchema(ts.ctx(), &pb.WriteSchemaRequest{Schema: testSchema})
	wantCode(t, err, codes.DeadlineExceeded, "at most 1ns")
	if got := ts.state(); got.head != 0 {
		t.Errorf("a timed-out write changed the store to revision %d", got.head)
	}
}

// TestTLS serves both listeners over TLS from cert and key files.
func TestTLS(t *testing.T) {
	certPath, keyPath, pool := writeCert(t)
	ts := startServer(t, func(c *server.Config) {
		c.GRPCTLSCertPath, c.GRPCTLSKeyPath = certPath, keyPath
		c.HTTPTLSCertPath, c.HTTPTLSKeyPath = certPath, keyPath
	})
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}

	conn, err := grpc.NewClient(ts.srv.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)), grpc.WithPerRPCCredentials(bearerTLS(testKey)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := pb.NewSchemaServiceClient(conn).WriteSchema(ts.ctx(), &pb.WriteSchemaRequest{Schema: testSchema}); err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	req, _ := http.NewRequestWithContext(ts.ctx(), http.MethodPost, "https://"+ts.srv.HTTPAddr().String()+"/v1/schema/read", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("REST over TLS: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "definition doc") {
		t.Errorf("REST over TLS: HTTP %d %s", resp.StatusCode, body)
	}

	// Plaintext is refused on both.
	if resp, err := http.Get("http://" + ts.srv.HTTPAddr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plaintext HTTP served on a TLS listener")
		}
	}
}

type bearerTLS string

func (b bearerTLS) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearerTLS) RequireTransportSecurity() bool { return true }

// writeCert writes a self-signed certificate for localhost and 127.0.0.1.
func writeCert(t *testing.T) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certPath, keyPath, pool
}
