package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"

	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
)

// checkServeFlags refuses what serve would refuse later, before anything
// is written: no data directory, database or audit file is created for a
// serve that cannot start.
func checkServeFlags(opts *serveOptions) error {
	cfg := &opts.cfg
	if len(cfg.PresharedKeys) == 0 && cfg.Keys == nil && !cfg.AllowUnauthenticated {
		return errors.New("at least one preshared key is required (--grpc-preshared-key or MANDATE_GRPC_PRESHARED_KEY, or a --keys-file)")
	}
	for i, k := range cfg.PresharedKeys {
		if strings.TrimSpace(k) == "" {
			return fmt.Errorf("preshared key %d of %d is empty", i+1, len(cfg.PresharedKeys))
		}
	}
	switch opts.dsEngine {
	case "embedded", "memory":
		if opts.dsConnURI != "" {
			return fmt.Errorf("--datastore-conn-uri is not used by the %s datastore; remove it or choose another --datastore-engine", opts.dsEngine)
		}
	case "postgres", "cockroachdb":
		if err := checkSQLStoreFlags(opts.dsEngine, opts.dsConnURI, opts.sqlStore); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--datastore-engine %q: unknown engine; available: embedded, memory, postgres, cockroachdb", opts.dsEngine)
	}
	if cfg.MaxRevisionWait < 0 {
		return fmt.Errorf("--max-revision-wait %v: expected a positive duration", cfg.MaxRevisionWait)
	}
	if cfg.RevisionRetention < 0 {
		return fmt.Errorf("--revision-retention %v: expected a positive duration", cfg.RevisionRetention)
	}
	if _, err := resolveAudit(&opts.audit, opts.dsEngine, opts.dataDir); err != nil {
		return err
	}
	for _, l := range []struct {
		name, addr string
		files      server.TLSFiles
	}{
		{"gRPC", cfg.GRPCAddr, server.TLSFiles{CertPath: cfg.GRPCTLSCertPath, KeyPath: cfg.GRPCTLSKeyPath, ClientCAPath: cfg.GRPCTLSClientCAPath}},
		{"HTTP", cfg.HTTPAddr, server.TLSFiles{CertPath: cfg.HTTPTLSCertPath, KeyPath: cfg.HTTPTLSKeyPath, ClientCAPath: cfg.HTTPTLSClientCAPath}},
	} {
		tlsCfg, err := server.NewTLSConfig(l.name, l.files, nil)
		if err != nil {
			return err
		}
		flag := "--" + strings.ToLower(l.name) + "-addr"
		if l.addr == "" || tlsCfg != nil || isLoopback(l.addr) || opts.plaintextBeyondLoopback {
			continue
		}
		return fmt.Errorf("%s %q listens beyond loopback without TLS, which would send keys and data in the clear: give --%s-tls-cert-path and --%s-tls-key-path, listen on 127.0.0.1, or pass --allow-plaintext-beyond-loopback",
			flag, l.addr, strings.ToLower(l.name), strings.ToLower(l.name))
	}
	return nil
}

// isLoopback reports whether a listen address binds only loopback: an IP
// literal in 127.0.0.0/8 or ::1, or the name localhost. An empty host
// (every interface) and any other name are not.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// warnPlaintext logs, loudly, each listener that serves plaintext beyond
// loopback because --allow-plaintext-beyond-loopback said so.
func warnPlaintext(log *slog.Logger, opts *serveOptions) {
	cfg := &opts.cfg
	for _, l := range []struct{ name, addr, cert string }{
		{"gRPC", cfg.GRPCAddr, cfg.GRPCTLSCertPath},
		{"HTTP", cfg.HTTPAddr, cfg.HTTPTLSCertPath},
	} {
		if l.addr != "" && l.cert == "" && !isLoopback(l.addr) {
			log.Warn("INSECURE: listening beyond loopback without TLS (--allow-plaintext-beyond-loopback): bearer keys, relationships and decisions cross the network in the clear",
				"listener", l.name, "addr", l.addr)
		}
	}
}

// auditPlan is where the trail goes, decided from the flags alone.
type auditPlan struct {
	sink      string // file, stdout, postgres or none
	dir       string // of the file sink
	maxSize   int64
	overflow  audit.Overflow
	retention audit.Retention // of the file or postgres sink
}

// resolveAudit validates the --audit-* flags and decides the sink without
// touching the disk. auto is postgres with a postgres datastore, stdout
// with the memory datastore (which keeps nothing on disk, so neither does
// its trail unless --audit-sink file says so), and else a file in
// <data-dir>/audit.
func resolveAudit(o *auditOptions, dsEngine, dataDir string) (auditPlan, error) {
	var p auditPlan
	var err error
	if p.overflow, err = audit.ParseOverflow(o.overflow); err != nil {
		return p, fmt.Errorf("--audit-overflow: %w", err)
	}
	if o.buffer <= 0 {
		return p, fmt.Errorf("--audit-buffer %d: expected a positive number of events", o.buffer)
	}
	if p.maxSize, err = parseSize("--audit-max-file-size", o.maxFileSize); err != nil {
		return p, err
	}
	p.sink = o.sink
	if p.sink == "auto" {
		switch dsEngine {
		case "postgres":
			p.sink = "postgres"
		case "memory":
			p.sink = "stdout"
			if o.dir != "" {
				p.sink = "file"
			}
		default:
			p.sink = "file"
		}
	}
	switch p.sink {
	case "none", "stdout":
	case "file":
		p.dir = o.dir
		if p.dir == "" {
			p.dir = filepath.Join(dataDir, "audit")
		}
	case "postgres":
		if dsEngine != "postgres" {
			return p, errors.New("--audit-sink postgres needs --datastore-engine postgres (the trail goes to a table of that database)")
		}
	default:
		return p, fmt.Errorf("--audit-sink %q: expected auto, file, stdout, postgres or none", o.sink)
	}
	if p.retention, err = parseRetention(o.retention); err != nil {
		return p, err
	}
	if p.retention.Active() && p.sink != "file" && p.sink != "postgres" {
		return p, fmt.Errorf("--audit-retention applies to the file and postgres audit sinks only, not %s", p.sink)
	}
	return p, nil
}
