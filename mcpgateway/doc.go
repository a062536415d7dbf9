// Package mcpgateway authorizes Model Context Protocol traffic with
// Mandate: it is the OAuth resource server the MCP authorization spec
// describes, and it checks every tools/call, prompts/get and resources/read
// against Mandate before the MCP server sees it.
//
// It is a top-level package, not part of server/ or cmd/, because it runs
// as a separate process (`mandate mcp-gateway`) or inside someone else's MCP
// server (Gateway.Middleware), in front of MCP servers, and reaches Mandate
// only as a client of the mandate.v1 gRPC API: Check with explain for each
// call and its delegation chain, CheckBulk to filter tools/list,
// prompts/list and resources/list, and Watch to invalidate cached
// decisions. It shares no state with the server.
//
// Who is calling comes from the access token (a JWT from the configured
// issuer, verified with its JWKS): sub is the principal, client_id (or
// azp) the agent, and nested RFC 8693 act claims the agents in between.
// That claimed chain grants nothing: a call is allowed only when Mandate
// allows the agent on behalf of the principal and Mandate's live chain is
// exactly the claimed one.
//
// What is checked comes from a mapping file (ParseMapping): a tool, prompt
// or resource URI template maps to a resource and permission, with object
// IDs built from validated argument values.
//
// Both Streamable HTTP eras pass through: 2025-11-25 (initialize,
// Mcp-Session-Id, GET streams, DELETE; sessions are bound to the identity
// that opened them) and the stateless 2026-07-28 revision (Mcp-Method and
// Mcp-Name must match the body). Tool results, JSON or SSE, are passed
// through byte for byte; only list results are rewritten.
//
// A Mandate capability token (the Mandate-Capability header) is passed to
// Mandate's checks, never upstream: Mandate verifies it and binds it to
// its holder, which must be the calling agent, and the token's principal
// must be the OAuth token's subject. Calls with a token are not cached.
//
// A call Mandate holds for a person's approval (approval required by an
// escalation rule, or a denial only the agent's own grant is missing for)
// files the approval request with Mandate's ApprovalService, once per
// agent, principal, resource and permission while pending, and sends the
// client to the inbox's page for it: a -32042 URL elicitation (2025-11-25,
// declared in initialize), an input_required result (2026-07-28, declared
// in the request's _meta), else the request in the denial's data.
// Decisions an approval shaped are never cached.
package mcpgateway
