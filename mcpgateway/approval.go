package mcpgateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/rel"
)

// CodeURLElicitationRequired is MCP's URLElicitationRequiredError
// (revision 2025-11-25): the call can proceed once the user has completed
// the URL-mode elicitations in the error's data. The gateway answers a
// held call with it when the client declared URL elicitation.
const CodeURLElicitationRequired = -32042

// protoJSON writes the request to file as Mandate's REST API reads it.
var protoJSON = protojson.MarshalOptions{UseProtoNames: true}

// filer files approval requests for held calls with Mandate's
// ApprovalService, one pending request per (agent, principal, resource,
// permission): an agent retrying a held call does not file again.
type filer struct {
	client pb.ApprovalServiceClient
	inbox  *url.URL // the inbox's base (…/ui/); nil: no URL to give
	// mu serializes filing, so two concurrent retries cannot both find no
	// pending request and file twice (through this gateway).
	mu sync.Mutex
}

func newFiler(conn grpc.ClientConnInterface, inbox *url.URL) *filer {
	return &filer{client: pb.NewApprovalServiceClient(conn), inbox: inbox}
}

// requestURL is the inbox's page for one request, or "".
func (f *filer) requestURL(id string) string {
	if f.inbox == nil {
		return ""
	}
	return f.inbox.JoinPath("requests", id).String()
}

// file returns the pending request for the held call, filing it unless
// one is pending already. Mandate's request to file must be for the
// calling agent and the token's principal.
func (f *filer) file(ctx context.Context, id *Identity, dec Decision, info callInfo) (*pb.Approval, error) {
	req := dec.hold.GetRequest()
	agent, principal := objectOf(req.GetAgent()), objectOf(req.GetPrincipal())
	if agent != id.Agent || principal != id.Principal {
		return nil, fmt.Errorf("mandate's approval request is for %s acting for %s, not the caller %s acting for %s", agent, principal, id.Agent, id.Principal)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	pending, err := f.find(ctx, req, pb.ApprovalStatus_APPROVAL_STATUS_PENDING, func(*pb.Approval) bool { return true })
	if err != nil || pending != nil {
		return pending, err
	}
	filed := &pb.ApprovalServiceRequestRequest{
		Agent: req.GetAgent(), Principal: req.GetPrincipal(), Resource: req.GetResource(), Permission: req.GetPermission(),
		Task: req.GetTask(), Rule: req.GetRule(), EvaluationId: req.GetEvaluationId(), Duration: req.GetDuration(),
		Reason: reasonText(info, dec),
	}
	resp, err := f.client.Request(ctx, filed)
	if err != nil {
		return nil, fmt.Errorf("filing the approval request of %s for %s#%s: %w", id.Agent, dec.Resource, dec.Permission, err)
	}
	return resp.GetApproval(), nil
}

// singleUseGrant returns the id of a live, unredeemed single-use grant of
// exactly the held call (the caller's agent and principal, its resource
// and permission), or "". MCP has nowhere to name a grant, so the gateway
// names it for the agent: Mandate redeems it once, whoever asks.
func (f *filer) singleUseGrant(ctx context.Context, id *Identity, dec Decision) (string, error) {
	req := dec.hold.GetRequest()
	if objectOf(req.GetAgent()) != id.Agent || objectOf(req.GetPrincipal()) != id.Principal {
		return "", nil
	}
	a, err := f.find(ctx, req, pb.ApprovalStatus_APPROVAL_STATUS_APPROVED, func(a *pb.Approval) bool {
		return a.GetSingleUse() && a.GetRedeemedAt() == nil
	})
	return a.GetId(), err
}

// find returns the first request in status of req's agent and principal
// for req's resource and permission that also satisfies keep, or nil.
func (f *filer) find(ctx context.Context, req *pb.ApprovalServiceRequestRequest, status pb.ApprovalStatus, keep func(*pb.Approval) bool) (*pb.Approval, error) {
	list, err := f.client.List(ctx, &pb.ApprovalServiceListRequest{Filter: &pb.ApprovalFilter{
		Agent: req.GetAgent(), Principal: req.GetPrincipal(), Status: status,
	}})
	if err != nil {
		return nil, fmt.Errorf("listing the %s approval requests of %s: %w", status, objectOf(req.GetAgent()), err)
	}
	for _, a := range list.GetApprovals() {
		if objectOf(a.GetResource()) == objectOf(req.GetResource()) && a.GetPermission() == req.GetPermission() && keep(a) {
			return a, nil
		}
	}
	return nil, nil
}

// redeem retries a held call naming a single-use grant a person approved
// for it, and reports whether Mandate then allowed it (redeeming the
// grant). Anything else, an error included, leaves the call held.
func (g *Gateway) redeem(ctx context.Context, id *Identity, scope string, it checkItem, held Decision) bool {
	if id.capability != "" {
		return false // a token's checks name no grant
	}
	grant, err := g.filer.singleUseGrant(ctx, id, held)
	if err != nil || grant == "" {
		if err != nil {
			g.log.Error("looking for a single-use grant of a held call", "agent", id.Agent.String(), "error", err)
		}
		return false
	}
	it.approvalID = grant
	dec, err := g.dec.check(ctx, id, scope, it)
	if err != nil || !dec.Allowed {
		return false
	}
	g.log.Info("mcp call allowed by a single-use grant", "method", it.info.method, "name", it.info.name,
		"agent", id.Agent.String(), "principal", id.Principal.String(), "approval_id", grant)
	return true
}

// reasonText is the filed request's reason: what the agent called.
func reasonText(info callInfo, dec Decision) string {
	s := fmt.Sprintf("MCP %s %q through the Mandate gateway needs %s on %s", info.method, info.name, dec.Permission, dec.Resource)
	if dec.Rule != "" {
		s += fmt.Sprintf(" (escalation rule %s)", dec.Rule)
	}
	if info.session != "" {
		s += fmt.Sprintf(", MCP session %s", info.session)
	}
	return s
}

func objectOf(o *pb.ObjectReference) rel.Object {
	return rel.Object{Type: o.GetObjectType(), ID: o.GetObjectId()}
}

// approvalData is the approval part of a held call's error data.
type approvalData struct {
	// RequestID is the filed (or already pending) request; empty when
	// filing failed (FilingError says why).
	RequestID    string          `json:"request_id,omitempty"`
	Status       string          `json:"status,omitempty"`
	Rule         string          `json:"rule,omitempty"`
	Description  string          `json:"description,omitempty"`
	EvaluationID string          `json:"evaluation_id,omitempty"`
	URL          string          `json:"url,omitempty"`
	Request      json.RawMessage `json:"request"`
	FilingError  string          `json:"filing_error,omitempty"`
}

// urlElicitation is one URL-mode elicitation of a -32042 error's data.
type urlElicitation struct {
	Mode          string `json:"mode"`
	ElicitationID string `json:"elicitationId"`
	URL           string `json:"url"`
	Message       string `json:"message"`
}

// heldMessage is the text shown for a held call.
func heldMessage(id *Identity, dec Decision) string {
	why := "a person's approval is required"
	if dec.Rule != "" {
		why = fmt.Sprintf("escalation rule %s requires a person's approval", dec.Rule)
		if d := dec.hold.GetDescription(); d != "" {
			why += " (" + d + ")"
		}
	}
	return fmt.Sprintf("%s for %s to %s %s on behalf of %s: approve the request, then retry the call", why, id.Agent, dec.Permission, dec.Resource, id.Principal)
}

// held answers a call a person's approval would lift: the approval
// request is filed (or the pending one found) and the client is sent to
// the inbox with a URL elicitation where it declared support for one,
// else told in the denial's data.
func (g *Gateway) held(ctx context.Context, id *Identity, dec Decision, info callInfo, el elicitation, denied *rpcError) *rpcError {
	req, _ := protoJSON.Marshal(dec.hold.GetRequest())
	ad := &approvalData{Rule: dec.Rule, Description: dec.hold.GetDescription(), EvaluationID: dec.hold.GetEvaluationId(), Request: req}
	a, err := g.filer.file(ctx, id, dec, info)
	if err != nil {
		g.log.Error("mcp call held for approval, but the approval request was not filed", "method", info.method, "name", info.name,
			"agent", id.Agent.String(), "error", err)
		ad.FilingError = "the approval request could not be filed: file it with Mandate's ApprovalService.Request"
	} else {
		ad.RequestID, ad.Status, ad.URL = a.GetId(), a.GetStatus().String(), g.filer.requestURL(a.GetId())
		g.log.Info("mcp call held for approval", "method", info.method, "name", info.name, "agent", id.Agent.String(),
			"principal", id.Principal.String(), "approval_id", a.GetId(), "rule", dec.Rule)
	}
	if el.url && ad.URL != "" {
		msg := heldMessage(id, dec)
		u := urlElicitation{Mode: "url", ElicitationID: ad.RequestID, URL: ad.URL, Message: msg}
		if el.stateless {
			// Revision 2026-07-28 asks for client input in band: the call's
			// result says input is required, and the client retries the call
			// once the user is done at the URL.
			return &rpcError{result: map[string]any{
				"resultType":    "input_required",
				"inputRequests": map[string]any{"mandate_approval": map[string]any{"method": "elicitation/create", "params": u}},
			}}
		}
		return &rpcError{code: CodeURLElicitationRequired, message: msg, data: map[string]any{
			"elicitations": []urlElicitation{u},
			"approval":     ad,
		}}
	}
	d := denied.data.(denial)
	d.Approval = ad
	denied.data = d
	if dec.Reason == ReasonApprovalRequired {
		denied.message = "denied by Mandate: " + heldMessage(id, dec)
	}
	return denied
}

// elicitation is what the client declared it can do: URL-mode elicitation
// (url), in a stateless 2026-07-28 request (stateless).
type elicitation struct{ url, stateless bool }

// Reserved _meta keys of a revision 2026-07-28 request.
const (
	metaProtocolVersion    = "io.modelcontextprotocol/protocolVersion"
	metaClientCapabilities = "io.modelcontextprotocol/clientCapabilities"
)

// elicitationOf reads what the client of a call declared. A 2026-07-28
// request carries its client's capabilities in its own _meta, and the
// server must not infer them from other requests; a 2025-11-25 session
// declared them in initialize.
func (g *Gateway) elicitationOf(msg *message, sess string) elicitation {
	var p struct {
		Meta map[string]json.RawMessage `json:"_meta"`
	}
	_ = json.Unmarshal(msg.Params, &p)
	var version string
	_ = json.Unmarshal(p.Meta[metaProtocolVersion], &version)
	if version >= "2026-07-28" {
		caps := p.Meta[metaClientCapabilities]
		return elicitation{stateless: true, url: declaresURLElicitation([]byte(`{"capabilities":` + string(orNull(caps)) + `}`))}
	}
	return elicitation{url: g.sessions.elicitsURL(sess)}
}

func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}
