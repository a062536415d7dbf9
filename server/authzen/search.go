package authzen

import (
	"context"
	"sort"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

// Searches answer every result in one page (the interop harness does not
// follow next_token): the core's limit of 0 asks for them all. Only
// definite answers are results: a caveated result missing context, and a
// wildcard subject, are left out (fail closed).

// searched is a search request mapped onto the schema.
type searched struct {
	req        searchRequest
	sch        *schema.Schema
	cctx       map[string]any
	sub        rel.Subject
	obo        *rel.Object
	obj        rel.Object
	rm         ResourceMapping
	contextual []rel.Relationship
	token      string
}

// search parses a search request and maps its subject and resource (whose
// IDs it needs or not) and its contextual relationships.
func (h *Handler) search(ctx context.Context, body []byte, subjectID, resourceID bool) (searched, error) {
	var s searched
	if err := decode(body, &s.req); err != nil {
		return s, err
	}
	var err error
	if s.sch, err = h.schemaNow(ctx); err != nil {
		return s, err
	}
	s.cctx = map[string]any{}
	copyProps(s.cctx, s.req.Context, h.m.Context)
	if s.sub, s.obo, err = h.subjectOf(s.sch, s.req.Subject, "", subjectID, s.cctx); err != nil {
		return s, err
	}
	if s.obj, s.rm, err = h.resourceOf(s.sch, s.req.Resource, "", resourceID, s.cctx); err != nil {
		return s, err
	}
	if s.contextual, err = h.contextual(requestMembers{subject: s.req.Subject, resource: s.req.Resource, action: s.req.Action, context: s.req.Context}); err != nil {
		return s, err
	}
	s.token, err = stringIn(s.req.Context, ContextCapabilityToken, "")
	return s, err
}

// errTokenSearch refuses a capability token on the subject and resource
// searches, which the core does not answer with one: ignoring it would
// search the bare subject's rights instead.
var errTokenSearch = badRequest("context."+ContextCapabilityToken, "not served by the subject and resource searches (the action search and the evaluations take it)")

func (h *Handler) searchSubject(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	s, err := h.search(ctx, body, false, true)
	if err != nil {
		return nil, err
	}
	if s.token != "" {
		return nil, errTokenSearch
	}
	perm, ok, err := h.permissionOf(s.sch, s.obj, s.rm, s.req.Action, "")
	if err != nil {
		return nil, err
	}
	out := entitySearchResponse{Results: []entityRef{}}
	lr := op.LookupSubjectsRequest{Resource: s.obj, Permission: perm, SubjectType: s.sub.Type, Context: nonEmpty(s.cctx), Contextual: s.contextual}
	*parsed = lr
	if !ok {
		return unknownAction{out}, nil
	}
	res, err := h.cfg.Core.LookupSubjects(ctx, lr)
	if err != nil {
		return nil, err
	}
	for _, r := range res.Results {
		if r.Decision == engine.Allowed && r.ID != "*" {
			out.Results = append(out.Results, entityRef{Type: s.req.Subject.Type, ID: r.ID})
		}
	}
	return out, nil
}

func (h *Handler) searchResource(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	s, err := h.search(ctx, body, true, false)
	if err != nil {
		return nil, err
	}
	if s.token != "" {
		return nil, errTokenSearch
	}
	if s.rm.ID != "" {
		return nil, badRequest("resource.type", "%q stands for the one object %s:%s in the mapping, so it cannot be searched", s.req.Resource.Type, s.rm.Type, s.rm.ID)
	}
	perm, ok, err := h.permissionOf(s.sch, s.obj, s.rm, s.req.Action, "")
	if err != nil {
		return nil, err
	}
	out := entitySearchResponse{Results: []entityRef{}}
	lr := op.LookupResourcesRequest{ResourceType: s.obj.Type, Permission: perm, Subject: s.sub, Context: nonEmpty(s.cctx), OnBehalfOf: s.obo, Contextual: s.contextual}
	*parsed = lr
	if !ok {
		return unknownAction{out}, nil
	}
	res, err := h.cfg.Core.LookupResources(ctx, lr)
	if err != nil {
		return nil, err
	}
	for _, r := range res.Results {
		if r.Decision == engine.Allowed {
			out.Results = append(out.Results, entityRef{Type: s.req.Resource.Type, ID: r.ID})
		}
	}
	return out, nil
}

// searchAction checks every action the resource's type offers: the
// mapping's actions for it, or else every permission of its schema type.
func (h *Handler) searchAction(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	s, err := h.search(ctx, body, true, true)
	if err != nil {
		return nil, err
	}
	def := s.sch.Definitions[s.obj.Type]
	actions := s.rm.actionsOf()
	if actions == nil {
		for _, name := range def.Order {
			if r := def.Relations[name]; r != nil && r.IsPermission {
				actions = append(actions, name)
			}
		}
	}
	bulk := op.CheckBulkRequest{}
	var names []string
	for _, a := range actions {
		p := h.m.permission(s.rm, a)
		if _, ok := def.Relations[p]; !ok {
			continue
		}
		names = append(names, a)
		bulk.Items = append(bulk.Items, op.CheckItem{CheckRequest: op.CheckRequest{
			Resource: s.obj, Permission: p, Subject: s.sub, Context: nonEmpty(s.cctx), OnBehalfOf: s.obo, Contextual: s.contextual,
			CapabilityToken: s.token,
		}})
	}
	*parsed = bulk
	out := actionSearchResponse{Results: []actionRef{}}
	if len(bulk.Items) == 0 {
		return out, nil
	}
	res, err := h.cfg.Core.CheckBulk(ctx, bulk)
	if err != nil {
		return nil, err
	}
	for i, it := range res.Items {
		if it.Err != nil {
			return nil, it.Err
		}
		if it.Decision == engine.Allowed {
			out.Results = append(out.Results, actionRef{Name: names[i]})
		}
	}
	sort.Slice(out.Results, func(i, j int) bool { return out.Results[i].Name < out.Results[j].Name })
	return out, nil
}

func nonEmpty(m map[string]any) map[string]any {
	if len(m) == 0 {
		return nil
	}
	return m
}
