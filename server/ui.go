package server

import (
	"fmt"
	"net/http"

	"github.com/mandate-authz/mandate/server/inbox"
)

// mountUI serves the web inbox (server/inbox) under /ui/ on the HTTP
// listener when Config.UI is set. It signs people in itself (OIDC or a
// trusted proxy's header); the API's bearer keys play no part in it.
func (s *Server) mountUI(mux *http.ServeMux) error {
	if s.cfg.UI == nil {
		return nil
	}
	cfg := *s.cfg.UI
	if cfg.Log == nil {
		cfg.Log = s.log
	}
	// Cookies are Secure whenever the listener speaks TLS.
	cfg.SecureCookies = cfg.SecureCookies || s.cfg.HTTPTLSCertPath != ""
	deps := inbox.Deps{Core: s.core}
	if s.approvals != nil {
		deps.Approvals = s.approvals
		// The inbox offers no longer grant than the service gives.
		if cfg.MaxGrantDuration <= 0 || cfg.MaxGrantDuration > s.approvals.MaxGrant() {
			cfg.MaxGrantDuration = s.approvals.MaxGrant()
		}
	}
	if s.tokenSvc != nil {
		deps.Tokens, deps.Revocations = s.tokenSvc, s.core
	}
	ui, err := inbox.New(cfg, deps)
	if err != nil {
		return fmt.Errorf("the web inbox: %w", err)
	}
	mux.Handle(inbox.Prefix, ui.Handler())
	return nil
}
