package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/authzed-go/v1"
	"github.com/authzed/grpcutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/server"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	path string // its certificate, PEM
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	path := filepath.Join(t.TempDir(), name+".pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, path: path, pool: pool}
}

// issue signs a leaf certificate named cn (for localhost and 127.0.0.1)
// and writes it and its key to certPath and keyPath.
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage, certPath, keyPath string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if certPath != "" {
		if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// servedName handshakes with addr and returns the common name of the
// certificate it serves.
func servedName(t *testing.T, addr string, roots *x509.CertPool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestTLSFilesReloaded replaces the certificate and key files of both
// listeners while the server runs: new handshakes get the new certificate
// without a restart, and a half-written renewal keeps the old one.
func TestTLSFilesReloaded(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.issue(t, "first", x509.ExtKeyUsageServerAuth, certPath, keyPath)
	ts := startServer(t, func(c *server.Config) {
		c.GRPCTLSCertPath, c.GRPCTLSKeyPath = certPath, keyPath
		c.HTTPTLSCertPath, c.HTTPTLSKeyPath = certPath, keyPath
	})
	for _, addr := range []string{ts.srv.GRPCAddr().String(), ts.srv.HTTPAddr().String()} {
		if got := servedName(t, addr, ca.pool); got != "first" {
			t.Fatalf("%s serves %q, want first", addr, got)
		}
	}

	// A certificate without its key (as a renewal half done) is not
	// loaded: the old pair keeps being served.
	ca.issue(t, "second", x509.ExtKeyUsageServerAuth, certPath, filepath.Join(dir, "unused-key.pem"))
	future := time.Now().Add(time.Minute)
	os.Chtimes(certPath, future, future)
	time.Sleep(1100 * time.Millisecond)
	if got := servedName(t, ts.srv.GRPCAddr().String(), ca.pool); got != "first" {
		t.Errorf("a mismatched certificate and key were served (%q)", got)
	}
	if !strings.Contains(ts.logs.String(), "TLS files changed but do not load") {
		t.Errorf("the failed reload was not logged:\n%s", ts.logs.String())
	}

	ca.issue(t, "third", x509.ExtKeyUsageServerAuth, certPath, keyPath)
	later := future.Add(time.Minute)
	os.Chtimes(certPath, later, later)
	os.Chtimes(keyPath, later, later)
	for _, addr := range []string{ts.srv.GRPCAddr().String(), ts.srv.HTTPAddr().String()} {
		deadline := time.Now().Add(5 * time.Second)
		for servedName(t, addr, ca.pool) != "third" {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not serve the renewed certificate within 5s", addr)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestMutualTLS: with a client CA, both listeners serve only clients
// presenting a certificate that CA signed.
func TestMutualTLS(t *testing.T) {
	ca, clientCA, otherCA := newTestCA(t, "server-ca"), newTestCA(t, "client-ca"), newTestCA(t, "other-ca")
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.issue(t, "server", x509.ExtKeyUsageServerAuth, certPath, keyPath)
	ts := startServer(t, func(c *server.Config) {
		c.GRPCTLSCertPath, c.GRPCTLSKeyPath, c.GRPCTLSClientCAPath = certPath, keyPath, clientCA.path
		c.HTTPTLSCertPath, c.HTTPTLSKeyPath, c.HTTPTLSClientCAPath = certPath, keyPath, clientCA.path
	})
	good := clientCA.issue(t, "service-a", x509.ExtKeyUsageClientAuth, "", "")
	foreign := otherCA.issue(t, "intruder", x509.ExtKeyUsageClientAuth, "", "")
	for _, c := range []struct {
		name  string
		certs []tls.Certificate
		ok    bool
	}{
		{"no client certificate", nil, false},
		{"certificate of another CA", []tls.Certificate{foreign}, false},
		{"certificate of the client CA", []tls.Certificate{good}, true},
	} {
		tlsCfg := &tls.Config{RootCAs: ca.pool, ServerName: "localhost", Certificates: c.certs}
		conn, err := grpc.NewClient(ts.srv.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)), grpc.WithPerRPCCredentials(bearerTLS(testKey)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = v1.NewSchemaServiceClient(conn).WriteSchema(ts.ctx(), &v1.WriteSchemaRequest{Schema: testSchema})
		conn.Close()
		if (err == nil) != c.ok {
			t.Errorf("gRPC, %s: %v, want success %v", c.name, err, c.ok)
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
		resp, err := client.Get("https://" + ts.srv.HTTPAddr().String() + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		if (err == nil && resp.StatusCode == http.StatusOK) != c.ok {
			t.Errorf("HTTP, %s: %v, want success %v", c.name, err, c.ok)
		}
	}
}

// TestTLSAuthzedClient: SpiceDB's own client library connects over TLS
// as zed does; a plaintext client is refused by the TLS listener.
func TestTLSAuthzedClient(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca.issue(t, "server", x509.ExtKeyUsageServerAuth, certPath, keyPath)
	ts := startServer(t, func(c *server.Config) {
		c.GRPCTLSCertPath, c.GRPCTLSKeyPath = certPath, keyPath
	})
	addr := ts.srv.GRPCAddr().String()
	client, err := authzed.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.pool, ServerName: "localhost"})),
		grpcutil.WithBearerToken(testKey))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.WriteSchema(ts.ctx(), &v1.WriteSchemaRequest{Schema: testSchema}); err != nil {
		t.Fatalf("authzed-go over TLS: WriteSchema: %v", err)
	}
	if _, err := client.ReadSchema(ts.ctx(), &v1.ReadSchemaRequest{}); err != nil {
		t.Fatalf("authzed-go over TLS: ReadSchema: %v", err)
	}

	plain, err := authzed.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpcutil.WithInsecureBearerToken(testKey))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_, err = plain.ReadSchema(ts.ctx(), &v1.ReadSchemaRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a plaintext client on the TLS listener: %v, want Unavailable", err)
	}
}
