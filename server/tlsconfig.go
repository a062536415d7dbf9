package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// TLSFiles name one listener's TLS material. CertPath and KeyPath are both
// set or both empty (no TLS); ClientCAPath, when set, makes the listener
// demand a client certificate signed by one of its CAs (mTLS).
type TLSFiles struct {
	CertPath, KeyPath, ClientCAPath string
}

// tlsReloadInterval is how often, at most, a handshake looks for changed
// TLS files: often enough that a renewed certificate is served within
// seconds, rarely enough that a handshake storm does not stat the files
// on every connection.
const tlsReloadInterval = time.Second

// NewTLSConfig returns the server TLS configuration for files, or nil when
// they name no certificate. The files are read now, so that a bad path or
// pair fails at startup, and again whenever one of them changes (checked
// at most every tlsReloadInterval, on a handshake): a renewed certificate
// is served without a restart, and a broken renewal keeps the last good
// material (logged to log, which may be nil). which names the listener in
// errors.
func NewTLSConfig(which string, files TLSFiles, log *slog.Logger) (*tls.Config, error) {
	if files.CertPath == "" && files.KeyPath == "" {
		if files.ClientCAPath != "" {
			return nil, fmt.Errorf("%s TLS: a client CA file (%q) needs a certificate and a key for the listener", which, files.ClientCAPath)
		}
		return nil, nil
	}
	if files.CertPath == "" || files.KeyPath == "" {
		return nil, fmt.Errorf("%s TLS: both a certificate and a key path are required (got cert %q, key %q)", which, files.CertPath, files.KeyPath)
	}
	r := &tlsReloader{which: which, files: files, log: log}
	mat, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cur = mat
	r.checked = time.Now()
	// The returned config is only a shell: every handshake gets the
	// current material from GetConfigForClient.
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2", "http/1.1"},
		GetConfigForClient: r.configForClient,
	}, nil
}

// tlsMaterial is one loaded generation of a listener's files.
type tlsMaterial struct {
	cfg   *tls.Config
	stamp [3]fileStamp
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, error) {
	if path == "" {
		return fileStamp{}, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// tlsReloader serves a listener's current TLS material, reloading it when
// its files change.
type tlsReloader struct {
	which string
	files TLSFiles
	log   *slog.Logger

	mu      sync.Mutex
	cur     *tlsMaterial
	checked time.Time
}

func (r *tlsReloader) load() (*tlsMaterial, error) {
	var mat tlsMaterial
	var err error
	for i, p := range []string{r.files.CertPath, r.files.KeyPath, r.files.ClientCAPath} {
		// Stamped before reading: a change made while reading is seen at
		// the next check.
		if mat.stamp[i], err = stampOf(p); err != nil {
			return nil, fmt.Errorf("%s TLS: %w", r.which, err)
		}
	}
	pair, err := tls.LoadX509KeyPair(r.files.CertPath, r.files.KeyPath)
	if err != nil {
		return nil, fmt.Errorf("%s TLS: loading certificate %q and key %q: %w", r.which, r.files.CertPath, r.files.KeyPath, err)
	}
	mat.cfg = &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}
	if r.files.ClientCAPath != "" {
		pem, err := os.ReadFile(r.files.ClientCAPath)
		if err != nil {
			return nil, fmt.Errorf("%s TLS: client CA file: %w", r.which, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s TLS: client CA file %q holds no PEM certificate", r.which, r.files.ClientCAPath)
		}
		mat.cfg.ClientCAs = pool
		mat.cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return &mat, nil
}

// current returns the material to serve, reloading it first if a file
// changed since the last check.
func (r *tlsReloader) current() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < tlsReloadInterval {
		return r.cur.cfg
	}
	r.checked = time.Now()
	changed := false
	for i, p := range []string{r.files.CertPath, r.files.KeyPath, r.files.ClientCAPath} {
		st, err := stampOf(p)
		if err != nil || st != r.cur.stamp[i] {
			changed = true
			break
		}
	}
	if !changed {
		return r.cur.cfg
	}
	mat, err := r.load()
	if err != nil {
		// A certificate and key renewed one file at a time do not match
		// in between: keep serving the last good pair until both land.
		if r.log != nil {
			r.log.Warn("TLS files changed but do not load; serving the previous certificate", "listener", r.which, "error", err)
		}
		return r.cur.cfg
	}
	r.cur = mat
	if r.log != nil {
		r.log.Info("reloaded TLS files", "listener", r.which, "cert", r.files.CertPath)
	}
	return r.cur.cfg
}

func (r *tlsReloader) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	cfg := r.current()
	if cfg == nil {
		return nil, errors.New("no TLS material")
	}
	return cfg, nil
}
