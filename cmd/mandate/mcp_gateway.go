package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-authz/mandate/mcpgateway"
)

type mcpGatewayOptions struct {
	conn         clientOptions
	listen       string
	upstream     string
	resource     string
	issuer       string
	mapping      string
	cacheTTL     time.Duration
	clockSkew    time.Duration
	maxBodyBytes int64
	approvalURL  string
}

func newMCPGatewayCommand() *cobra.Command {
	o := &mcpGatewayOptions{}
	cmd := &cobra.Command{
		Use:   "mcp-gateway",
		Short: "Authorize MCP tool calls with Mandate, in front of an MCP server",
		Long: `mcp-gateway is a reverse proxy in front of an MCP server's Streamable HTTP
endpoint (--upstream). It is the OAuth resource server for that endpoint: it serves
Protected Resource Metadata, accepts only JWT access tokens of --issuer whose aud is
--resource, and checks every tools/call, prompts/get and resources/read with the
Mandate server at --endpoint (the token's sub is the principal, its client the agent,
its act claims the chain, which must be live in Mandate). Lists are filtered to what
the caller may use. --mapping is the YAML file saying what each call is checked
against (see the README). The client's token never reaches the MCP server.

--timeout bounds each call to Mandate. --cache-ttl caches decisions, invalidated by
Mandate's Watch stream; with it, cached decisions are logged by the gateway but not
repeated in Mandate's audit trail.

A call Mandate holds for a person's approval (an escalation rule, or a denial only
the agent's own grant is missing for) files the approval request for the agent,
once per agent, principal, resource and permission while it is pending; a client
that declared URL elicitation gets error -32042 sending it to the request's page
under --approval-url, any other the request in the denial's data.`,
		Example: "  mandate mcp-gateway --upstream http://127.0.0.1:8081/mcp --issuer http://127.0.0.1:8082 \\\n" +
			"    --mapping mapping.yaml --endpoint 127.0.0.1:50051 --insecure",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMCPGateway(cmd, o)
		},
	}
	addClientFlags(cmd.Flags(), &o.conn)
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8090", "host:port the gateway listens on")
	f.StringVar(&o.upstream, "upstream", "", "URL of the MCP server's Streamable HTTP endpoint (required)")
	f.StringVar(&o.resource, "resource", "", "the gateway's canonical URI, which tokens must name in aud (default http://<listen>/mcp)")
	f.StringVar(&o.issuer, "issuer", "", "OAuth/OIDC issuer URL whose tokens are accepted (required; discovery names its JWKS)")
	f.StringVar(&o.mapping, "mapping", "", "YAML file mapping tools, prompts and resources to Mandate checks (required)")
	f.DurationVar(&o.cacheTTL, "cache-ttl", 0, "cache decisions this long, invalidated by Mandate's Watch stream (0: every call is checked)")
	f.DurationVar(&o.clockSkew, "clock-skew", mcpgateway.DefaultClockSkew, "tolerance on a token's exp and nbf")
	f.StringVar(&o.approvalURL, "approval-url", "", "base URL of Mandate's web inbox (e.g. http://127.0.0.1:8443/ui/): a held call sends a client declaring URL elicitation to its request's page")
	f.Int64Var(&o.maxBodyBytes, "max-body-bytes", mcpgateway.DefaultMaxBodyBytes, "largest request body accepted")
	return cmd
}

func runMCPGateway(cmd *cobra.Command, o *mcpGatewayOptions) error {
	for flag, v := range map[string]string{"--upstream": o.upstream, "--issuer": o.issuer, "--mapping": o.mapping} {
		if strings.TrimSpace(v) == "" {
			return fmt.Errorf("%s is required", flag)
		}
	}
	up, err := url.Parse(o.upstream)
	if err != nil || (up.Scheme != "http" && up.Scheme != "https") || up.Host == "" {
		return fmt.Errorf("--upstream %q: expected an http(s) URL of the MCP endpoint, such as http://127.0.0.1:8081/mcp", o.upstream)
	}
	if o.approvalURL != "" {
		if u, err := url.Parse(o.approvalURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--approval-url %q: expected the http(s) URL of Mandate's inbox, such as http://127.0.0.1:8443/ui/", o.approvalURL)
		}
	}
	if o.maxBodyBytes <= 0 {
		return fmt.Errorf("--max-body-bytes %d: expected a positive size", o.maxBodyBytes)
	}
	if o.clockSkew < 0 || o.clockSkew > 5*time.Minute {
		return fmt.Errorf("--clock-skew %v: expected between 0 and 5m", o.clockSkew)
	}
	text, err := os.ReadFile(o.mapping)
	if err != nil {
		return fmt.Errorf("--mapping: %w", err)
	}
	mapping, err := mcpgateway.ParseMapping(text)
	if err != nil {
		return fmt.Errorf("--mapping %s: %w", o.mapping, err)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer ln.Close()
	if o.resource == "" {
		o.resource = "http://" + ln.Addr().String() + "/mcp"
	}
	c, _, cancel, err := connect(cmd, &o.conn)
	if err != nil {
		return err
	}
	cancel() // the gateway runs until interrupted; --timeout bounds each check
	defer c.close()

	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
	ctx := cmd.Context()
	skew := o.clockSkew
	if skew == 0 {
		skew = -1 // Config reads 0 as the default
	}
	gw, err := mcpgateway.New(ctx, mcpgateway.Config{
		Resource: o.resource, Issuer: o.issuer, Mapping: mapping, Mandate: c.conn,
		MaxBodyBytes: o.maxBodyBytes, ClockSkew: skew, CheckTimeout: o.conn.timeout, CacheTTL: o.cacheTTL, Logger: log,
		ApprovalURL: o.approvalURL,
	})
	if err != nil {
		return err
	}
	defer gw.Close()
	srv := &http.Server{
		Handler:           gw.Middleware(mcpgateway.NewProxy(up, log)),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	log.Info("mcp-gateway listening", "addr", ln.Addr().String(), "resource", o.resource, "upstream", up.String(),
		"metadata", gw.MetadataURL(), "mandate", o.conn.endpoint)
	select {
	case err := <-done:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}
