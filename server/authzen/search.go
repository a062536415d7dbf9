package authzen

import (
	"context"
	"sort"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/op"
)

// Searches answer every result in one page (the interop harness does not
// follow next_token): the core's limit of 0 asks for them all. Only
// definite answers are results: a caveated result missing context, and a
// wildcard subject, are left out (fail closed).

func (h *Handler) searchSubject(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	var req searchRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	sch, err := h.schemaNow(ctx)
	if err != nil {
		return nil, err
	}
	cctx := map[string]any{}
	copyProps(cctx, req.Context, h.m.Context)
	sub, _, err := h.subjectOf(sch, req.Subject, "", false, cctx)
	if err != nil {
		return nil, err
	}
	obj, rm, err := h.resourceOf(sch, req.Resource, "", true, cctx)
	if err != nil {
		return nil, err
	}
	perm, ok, err := h.permissionOf(sch, obj, rm, req.Action, "")
	if err != nil {
		return nil, err
	}
	out := entitySearchResponse{Results: []entityRef{}}
	lr := op.LookupSubjectsRequest{Resource: obj, Permission: perm, SubjectType: sub.Type, Context: nonEmpty(cctx)}
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
			out.Results = append(out.Results, entityRef{Type: req.Subject.Type, ID: r.ID})
		}
	}
	return out, nil
}

func (h *Handler) searchResource(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	var req searchRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	sch, err := h.schemaNow(ctx)
	if err != nil {
		return nil, err
	}
	cctx := map[string]any{}
	copyProps(cctx, req.Context, h.m.Context)
	sub, obo, err := h.subjectOf(sch, req.Subject, "", true, cctx)
	if err != nil {
		return nil, err
	}
	obj, rm, err := h.resourceOf(sch, req.Resource, "", false, cctx)
	if err != nil {
		return nil, err
	}
	if rm.ID != "" {
		return nil, badRequest("resource.type", "%q stands for the one object %s:%s in the mapping, so it cannot be searched", req.Resource.Type, rm.Type, rm.ID)
	}
	perm, ok, err := h.permissionOf(sch, obj, rm, req.Action, "")
	if err != nil {
		return nil, err
	}
	out := entitySearchResponse{Results: []entityRef{}}
	lr := op.LookupResourcesRequest{ResourceType: obj.Type, Permission: perm, Subject: sub, Context: nonEmpty(cctx), OnBehalfOf: obo}
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
			out.Results = append(out.Results, entityRef{Type: req.Resource.Type, ID: r.ID})
		}
	}
	return out, nil
}

// searchAction checks every action the resource's type offers: the
// mapping's actions for it, or else every permission of its schema type.
func (h *Handler) searchAction(ctx context.Context, body []byte, parsed *op.Request) (any, error) {
	var req searchRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	sch, err := h.schemaNow(ctx)
	if err != nil {
		return nil, err
	}
	cctx := map[string]any{}
	copyProps(cctx, req.Context, h.m.Context)
	sub, obo, err := h.subjectOf(sch, req.Subject, "", true, cctx)
	if err != nil {
		return nil, err
	}
	obj, rm, err := h.resourceOf(sch, req.Resource, "", true, cctx)
	if err != nil {
		return nil, err
	}
	def := sch.Definitions[obj.Type]
	actions := rm.actionsOf()
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
		p := h.m.permission(rm, a)
		if _, ok := def.Relations[p]; !ok {
			continue
		}
		names = append(names, a)
		bulk.Items = append(bulk.Items, op.CheckItem{CheckRequest: op.CheckRequest{
			Resource: obj, Permission: p, Subject: sub, Context: nonEmpty(cctx), OnBehalfOf: obo,
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
