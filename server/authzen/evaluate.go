package authzen

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

// converted is one evaluation as a core check, or an unknown action.
type converted struct {
	req     op.CheckRequest
	unknown bool
	// sources names the members the caveat context came from, for an
	// error about it.
	sources []string
}

// contextError names where bad caveat context came from.
func (c converted) contextError(at string, err error) error {
	if !errors.Is(err, engine.ErrInvalidContext) {
		return err
	}
	member := at + "context"
	if len(c.sources) > 0 {
		member = strings.Join(c.sources, ", ")
	}
	return badRequest(member, "%v", err)
}

// schemaNow is the schema checks are validated against: the engine's head.
func (h *Handler) schemaNow(ctx context.Context) (*schema.Schema, error) {
	sch, err := h.cfg.Core.Schema(ctx, 0)
	if err == nil && sch == nil {
		err = op.ErrSchemaNotFound
	}
	return sch, err
}

// subjectOf maps an AuthZEN subject onto a schema subject, its caveat
// context and its principal (on_behalf_of). at prefixes member names.
func (h *Handler) subjectOf(sch *schema.Schema, s *entity, at string, needID bool, ctx map[string]any) (rel.Subject, *rel.Object, error) {
	if s == nil {
		return rel.Subject{}, nil, badRequest(at+"subject", "missing: expected {\"type\", \"id\"}")
	}
	if s.Type == "" {
		return rel.Subject{}, nil, badRequest(at+"subject.type", "missing")
	}
	if needID && s.ID == "" {
		return rel.Subject{}, nil, badRequest(at+"subject.id", "missing")
	}
	objType, sm := h.m.subject(s.Type)
	if sch.Definitions[objType] == nil {
		return rel.Subject{}, nil, badRequest(at+"subject.type", "%q names schema type %q, which the schema does not define", s.Type, objType)
	}
	copyProps(ctx, s.Properties, sm.Properties)
	var obo *rel.Object
	if v, ok := s.Properties[sm.OnBehalfOf]; ok {
		member := at + "subject.properties." + sm.OnBehalfOf
		m, ok := v.(map[string]any)
		t, _ := m["type"].(string)
		id, _ := m["id"].(string)
		if !ok || t == "" || id == "" {
			return rel.Subject{}, nil, badRequest(member, "expected the principal as an entity {\"type\": string, \"id\": string}")
		}
		pt, _ := h.m.subject(t)
		if sch.Definitions[pt] == nil {
			return rel.Subject{}, nil, badRequest(member+".type", "%q names schema type %q, which the schema does not define", t, pt)
		}
		obo = &rel.Object{Type: pt, ID: id}
	}
	return rel.Subject{Type: objType, ID: s.ID}, obo, nil
}

// resourceOf maps an AuthZEN resource onto a schema object and its
// mapping, adding its properties to ctx.
func (h *Handler) resourceOf(sch *schema.Schema, r *entity, at string, needID bool, ctx map[string]any) (rel.Object, ResourceMapping, error) {
	if r == nil {
		return rel.Object{}, ResourceMapping{}, badRequest(at+"resource", "missing: expected {\"type\", \"id\"}")
	}
	if r.Type == "" {
		return rel.Object{}, ResourceMapping{}, badRequest(at+"resource.type", "missing")
	}
	rm := h.m.resource(r.Type)
	// A type the mapping pins onto one object needs no id of its own.
	if needID && r.ID == "" && rm.ID == "" {
		return rel.Object{}, ResourceMapping{}, badRequest(at+"resource.id", "missing")
	}
	if sch.Definitions[rm.Type] == nil {
		return rel.Object{}, rm, badRequest(at+"resource.type", "%q names schema type %q, which the schema does not define", r.Type, rm.Type)
	}
	copyProps(ctx, r.Properties, rm.Properties)
	id := r.ID
	if rm.ID != "" {
		id = rm.ID
	}
	return rel.Object{Type: rm.Type, ID: id}, rm, nil
}

// copyProps copies the mapped properties into the caveat context.
func copyProps(ctx map[string]any, props map[string]any, mapped map[string]string) {
	copyNamed(ctx, props, mapped, "", nil)
}

// copyNamed copies the mapped members into the caveat context, adding the
// name of each copied one (prefix + member) to *sources.
func copyNamed(ctx map[string]any, props map[string]any, mapped map[string]string, prefix string, sources *[]string) {
	for prop, param := range mapped {
		if v, ok := props[prop]; ok {
			ctx[param] = v
			if sources != nil {
				*sources = append(*sources, prefix+prop)
			}
		}
	}
	if sources != nil {
		sort.Strings(*sources)
	}
}

// permissionOf names the permission an action checks, and whether the
// resource's type has it.
func (h *Handler) permissionOf(sch *schema.Schema, obj rel.Object, rm ResourceMapping, a *action, at string) (string, bool, error) {
	if a == nil || a.Name == "" {
		return "", false, badRequest(at+"action.name", "missing")
	}
	p := h.m.permission(rm, a.Name)
	_, ok := sch.Definitions[obj.Type].Relations[p]
	return p, ok, nil
}

// convert turns one evaluation into a core check.
func (h *Handler) convert(sch *schema.Schema, e evaluationRequest, at string) (converted, error) {
	ctx := map[string]any{}
	var sources []string
	copyNamed(ctx, e.Context, h.m.Context, at+"context.", &sources)
	sub, obo, err := h.subjectOf(sch, e.Subject, at, true, ctx)
	if err != nil {
		return converted{}, err
	}
	obj, rm, err := h.resourceOf(sch, e.Resource, at, true, ctx)
	if err != nil {
		return converted{}, err
	}
	if e.Subject != nil {
		_, sm := h.m.subject(e.Subject.Type)
		copyNamed(map[string]any{}, e.Subject.Properties, sm.Properties, at+"subject.properties.", &sources)
	}
	copyNamed(map[string]any{}, e.Resource.Properties, rm.Properties, at+"resource.properties.", &sources)
	perm, ok, err := h.permissionOf(sch, obj, rm, e.Action, at)
	if err != nil {
		return converted{}, err
	}
	contextual, err := h.contextual(requestMembers{subject: e.Subject, resource: e.Resource, action: e.Action, context: e.Context, at: at})
	if err != nil {
		return converted{}, err
	}
	token, err := stringIn(e.Context, ContextCapabilityToken, at)
	if err != nil {
		return converted{}, err
	}
	approvalID, err := stringIn(e.Context, ContextApprovalID, at)
	if err != nil {
		return converted{}, err
	}
	if len(ctx) == 0 {
		ctx = nil
	}
	return converted{
		req: op.CheckRequest{Resource: obj, Permission: perm, Subject: sub, Context: ctx, OnBehalfOf: obo,
			Contextual: contextual, CapabilityToken: token, ApprovalID: approvalID},
		unknown: !ok,
		sources: sources,
	}, nil
}

func (h *Handler) evaluation(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	var req evaluationRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	return h.evaluateOne(ctx, req, parsed)
}

func (h *Handler) evaluateOne(ctx context.Context, req evaluationRequest, parsed *op.Request) (any, error) {
	sch, err := h.schemaNow(ctx)
	if err != nil {
		return nil, err
	}
	c, err := h.convert(sch, req, "")
	if err != nil {
		return nil, err
	}
	*parsed = c.req
	if c.unknown {
		return unknownAction{decision{Decision: false, Context: &decisionContext{Reason: "unknown_action"}}}, nil
	}
	c.req.Explain = true
	res, err := h.cfg.Core.Check(ctx, c.req)
	if err != nil {
		return nil, c.contextError("", err)
	}
	d := decision{Decision: res.Decision == engine.Allowed}
	d.Context = explain(res)
	return d, nil
}

// explain is a single decision's context: the agent's chain and reason,
// or the caveat context a conditional answer lacked; nil when there is
// nothing to say.
func explain(res op.CheckResult) *decisionContext {
	var out decisionContext
	if res.Decision == engine.Conditional {
		out.Reason, out.Missing = "missing_context", res.Missing
	}
	if d := res.Delegation; d != nil {
		if d.Reason != "" {
			out.Reason = string(d.Reason)
		}
		out.ResolvableByApproval = d.ResolvableByApproval
		for i, e := range d.Chain {
			out.Chain = append(out.Chain, chainLink{
				Subject:  entityRef{Type: e.Subject.Type, ID: e.Subject.ID},
				Decision: e.Grant == engine.Allowed,
				Failed:   d.Reason != "" && d.FailedAt == i,
			})
		}
	}
	if t := res.Token; t != nil {
		out.TokenID = t.TokenID
		if !t.Allowed && t.Reason != "" {
			out.Reason = string(t.Reason)
		}
	}
	if a := res.Approval; a != nil {
		out.Approval = approvalHintOf(a)
		// An escalation rule's hold is approval_required; a denial where
		// only the agent's own grant is missing keeps the engine's reason
		// (agent_not_granted), the hint saying what would lift it.
		if a.Required && a.Rule != "" {
			out.Reason = op.ReasonApprovalRequired
		}
	}
	for _, r := range res.Contextual {
		out.Contextual = append(out.Contextual, r.String())
	}
	if out.Reason == "" && out.Chain == nil && out.Contextual == nil && out.TokenID == "" && out.Approval == nil {
		return nil
	}
	return &out
}

// ContextCapabilityToken is the context member carrying a capability
// token: the subject must be its holder, and the token stands in for the
// holder's own grant and acts_for link (mandate.v1's capability_token).
// It is a credential: it never becomes caveat context (map it under
// `context:` and it would) and the audit records only the token's id.
const ContextCapabilityToken = "capability_token"

// ContextApprovalID is the context member naming the approval grant an
// agent's retry redeems (mandate.v1's approval_id).
const ContextApprovalID = "approval_id"

// stringIn returns the string a request's context carries as member name,
// or "" when it carries none.
func stringIn(ctx map[string]any, name, at string) (string, error) {
	v, ok := ctx[name]
	if !ok {
		return "", nil
	}
	s, isStr := v.(string)
	if !isStr || s == "" {
		return "", badRequest(at+"context."+name, "expected a non-empty string")
	}
	return s, nil
}

// contextual fills the mapping's relationship templates from a request.
func (h *Handler) contextual(m requestMembers) ([]rel.Relationship, error) {
	return h.m.contextual(m, h.cfg.Core.Limits().MaxContextualRelationships)
}

func (h *Handler) evaluations(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	var req evaluationsRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	sem := req.Options.EvaluationsSemantic
	switch sem {
	case "", executeAll, denyOnFirstDeny, permitOnFirstPermit:
	default:
		return nil, badRequest("options.evaluations_semantic", "%q: expected %s, %s or %s", sem, executeAll, denyOnFirstDeny, permitOnFirstPermit)
	}
	if len(req.Evaluations) == 0 {
		// Without evaluations the request is one evaluation of its
		// top-level members (AuthZEN 1.0, Evaluations).
		return h.evaluateOne(ctx, evaluationRequest{Subject: req.Subject, Action: req.Action, Resource: req.Resource, Context: req.Context}, parsed)
	}
	if max := h.cfg.Core.Limits().MaxCheckBulkItems; len(req.Evaluations) > max {
		return nil, badRequest("evaluations", "%d evaluations, at most %d per request (--max-check-bulk-items)", len(req.Evaluations), max)
	}
	sch, err := h.schemaNow(ctx)
	if err != nil {
		return nil, err
	}
	bulk := op.CheckBulkRequest{Items: make([]op.CheckItem, len(req.Evaluations))}
	convs := make([]converted, len(req.Evaluations))
	*parsed = bulk
	for i, e := range req.Evaluations {
		// Top-level members are the defaults of every item's missing ones.
		if e.Subject == nil {
			e.Subject = req.Subject
		}
		if e.Action == nil {
			e.Action = req.Action
		}
		if e.Resource == nil {
			e.Resource = req.Resource
		}
		if e.Context == nil {
			e.Context = req.Context
		}
		c, err := h.convert(sch, e, fmt.Sprintf("evaluations[%d].", i))
		if err != nil {
			return nil, err
		}
		convs[i] = c
		bulk.Items[i].CheckRequest = c.req
		if c.unknown {
			bulk.Items[i].Err = errUnknownAction
		}
	}
	res, err := h.cfg.Core.CheckBulk(ctx, bulk)
	if err != nil {
		return nil, err
	}
	out := evaluationsResponse{Evaluations: make([]decision, 0, len(res.Items))}
	for i, it := range res.Items {
		if it.Err != nil && it.Err != errUnknownAction {
			e := toError(ctx, convs[i].contextError(fmt.Sprintf("evaluations[%d].", i), it.Err))
			if e.Status == 400 && !strings.HasPrefix(e.Message, "evaluations[") {
				e.Message = fmt.Sprintf("evaluations[%d]: %s", i, e.Message)
			}
			return nil, e
		}
		allowed := it.Err == nil && it.Decision == engine.Allowed
		out.Evaluations = append(out.Evaluations, decision{Decision: allowed})
		if (sem == denyOnFirstDeny && !allowed) || (sem == permitOnFirstPermit && allowed) {
			break
		}
	}
	return out, nil
}
