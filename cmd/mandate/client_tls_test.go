package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// pemCA writes a CA's certificate to dir/name.pem and returns a function
// that issues leaf certificates under it, written to dir/<leaf>.pem and
// dir/<leaf>-key.pem.
func pemCA(t *testing.T, dir, name string) func(leaf string, usage x509.ExtKeyUsage) (certPath, keyPath string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, name+".pem"), "CERTIFICATE", caDER)
	serial := int64(1)
	return func(leaf string, usage x509.ExtKeyUsage) (string, string) {
		serial++
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: leaf},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath := filepath.Join(dir, leaf+".pem"), filepath.Join(dir, leaf+"-key.pem")
		write(certPath, "CERTIFICATE", der)
		write(keyPath, "EC PRIVATE KEY", keyDER)
		return certPath, keyPath
	}
}

// TestClientOverMutualTLS serves with TLS and client verification and
// drives the CLI against it: with the CA and a client certificate the
// commands work; without the certificate, or in plaintext, they fail.
func TestClientOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverCA := pemCA(t, dir, "server-ca")
	clientCA := pemCA(t, dir, "client-ca")
	srvCert, srvKey := serverCA("server", x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := clientCA("client", x509.ExtKeyUsageClientAuth)

	logs := &syncBuffer{}
	root := newRootCommand()
	root.SetArgs([]string{"serve", "--grpc-preshared-key", "tls-key", "--datastore-engine", "memory", "--audit-sink", "none",
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--grpc-shutdown-grace-period", "1s",
		"--grpc-tls-cert-path", srvCert, "--grpc-tls-key-path", srvKey, "--grpc-tls-client-ca-path", filepath.Join(dir, "client-ca.pem")})
	root.SetOut(logs)
	root.SetErr(logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	serving := regexp.MustCompile(`msg=serving grpc=(\S+)`)
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; time.Sleep(10 * time.Millisecond) {
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", logs.String())
		}
	}

	conn := []string{"--endpoint", addr, "--token", "tls-key", "--timeout", "5s", "--tls-ca-path", filepath.Join(dir, "server-ca.pem")}
	withCert := append([]string{"--tls-cert-path", cliCert, "--tls-key-path", cliKey}, conn...)
	out, errOut, code := cli(t, "definition user {}\n", append([]string{"schema", "write", "-"}, withCert...)...)
	if code != 0 || !strings.Contains(out, "revision") {
		t.Fatalf("schema write over mTLS: exit %d\n%s%s", code, out, errOut)
	}
	if out := mustCLI(t, append([]string{"schema", "read"}, withCert...)...); !strings.Contains(out, "definition user") {
		t.Errorf("schema read over mTLS: %q", out)
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"without a client certificate", conn},
		{"in plaintext", []string{"--endpoint", addr, "--token", "tls-key", "--timeout", "5s", "--insecure"}},
		{"with half a client certificate", append([]string{"--tls-cert-path", cliCert}, conn...)},
	} {
		if _, errOut, code := cli(t, "", append([]string{"schema", "read"}, c.args...)...); code == 0 {
			t.Errorf("schema read %s succeeded", c.name)
		} else if c.name == "with half a client certificate" && !strings.Contains(errOut, "--tls-cert-path and --tls-key-path go together") {
			t.Errorf("schema read %s: %s", c.name, errOut)
		}
	}
}
