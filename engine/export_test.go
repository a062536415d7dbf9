package engine

import (
	"context"

	"github.com/mandate-authz/mandate/store"
)

// LookupResourcesByScan is LookupResources checking every object of the
// resource type: the reference the reverse walk is tested against.
func (e *Engine) LookupResourcesByScan(ctx context.Context, req LookupResourcesRequest) ([]LookupResult, store.Revision, error) {
	return e.collectResources(ctx, req, true)
}

// LookupSubjectsByScan is LookupSubjects checking every object of the
// subject type.
func (e *Engine) LookupSubjectsByScan(ctx context.Context, req LookupSubjectsRequest) ([]LookupResult, store.Revision, error) {
	return e.lookupSubjects(ctx, req, true)
}

// InternedCaveats returns the number of distinct caveats the index holds
// interned.
func (e *Engine) InternedCaveats() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return len(e.idx.caveats)
}
