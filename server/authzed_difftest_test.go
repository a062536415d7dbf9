package server_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/authzed-go/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// diffCase is a schema for the differential test with what to generate for
// it: the relationships each relation may hold and the checks to ask.
type diffCase struct {
	name   string
	schema string
	// rels lists, per resource type and relation, the subjects it takes:
	// "user", "user:*", "group#member", "user[caveat]",
	// "user[expiration]". A type's IDs are type0..type4; a relation
	// whose subject type is its own resource type only points to higher
	// IDs, so that no cycle forms.
	rels map[string][]string
	// checks lists resource type#permission to ask of every resource;
	// subjects lists the subjects asked about.
	checks   []string
	subjects []string
	// contexts are the request contexts each check is asked with.
	contexts []map[string]any
	// caveatContexts are, per caveat, the contexts a relationship may carry.
	caveatContexts map[string][]map[string]any
}

var diffCases = []diffCase{
	{
		name: "nested groups and arrows",
		schema: `definition user {}

definition group {
	relation member: user | group#member
	relation manager: user
	permission membership = member + manager
}

definition folder {
	relation parent: folder
	relation viewer: user | group#member
	permission view = viewer + parent->view
}

definition doc {
	relation parent: folder
	relation owner: user
	relation viewer: user | group#member | group#membership
	permission view = viewer + owner + parent->view
	permission edit = owner + parent->view
}
`,
		rels: map[string][]string{
			"group#member":  {"user", "group#member"},
			"group#manager": {"user"},
			"folder#parent": {"folder"},
			"folder#viewer": {"user", "group#member"},
			"doc#parent":    {"folder"},
			"doc#owner":     {"user"},
			"doc#viewer":    {"user", "group#member", "group#membership"},
		},
		checks:   []string{"doc#view", "doc#edit", "folder#view", "group#membership"},
		subjects: []string{"user:user0", "user:user1", "user:user2", "user:user3", "user:user4", "group:group1#member"},
		contexts: []map[string]any{nil},
	},
	{
		name: "intersections and exclusions",
		schema: `definition user {}

definition team {
	relation member: user
}

definition doc {
	relation viewer: user | team#member
	relation approved: user | team#member
	relation banned: user | team#member
	permission view = (viewer & approved) - banned
	permission any = viewer + approved
	permission unbanned_viewer = viewer - (approved & banned)
	permission nested = (viewer - banned) & (approved - banned)
}
`,
		rels: map[string][]string{
			"team#member":  {"user"},
			"doc#viewer":   {"user", "team#member"},
			"doc#approved": {"user", "team#member"},
			"doc#banned":   {"user", "team#member"},
		},
		checks:   []string{"doc#view", "doc#any", "doc#unbanned_viewer", "doc#nested"},
		subjects: []string{"user:user0", "user:user1", "user:user2", "user:user3", "user:user4"},
		contexts: []map[string]any{nil},
	},
	{
		name: "wildcards",
		schema: `definition user {}

definition doc {
	relation viewer: user | user:*
	relation blocked: user | user:*
	relation editor: user
	permission view = viewer - blocked
	permission edit = editor & viewer
	permission public_or_editor = viewer + editor
}
`,
		rels: map[string][]string{
			"doc#viewer":  {"user", "user:*"},
			"doc#blocked": {"user", "user:*"},
			"doc#editor":  {"user"},
		},
		checks:   []string{"doc#view", "doc#edit", "doc#public_or_editor"},
		subjects: []string{"user:user0", "user:user1", "user:user2", "user:user3", "user:user4", "user:nobody"},
		contexts: []map[string]any{nil},
	},
	{
		name: "caveats with partial context",
		schema: `caveat within_limit(amount int, limit int) {
	amount <= limit
}

caveat tier(level int) {
	level >= 2
}

definition user {}

definition group {
	relation member: user | user with tier
}

definition doc {
	relation viewer: user | user with within_limit | group#member
	relation admin: user with tier
	relation banned: user with within_limit
	permission view = viewer + admin
	permission strict = viewer & admin
	permission guarded = viewer - banned
}
`,
		rels: map[string][]string{
			"group#member": {"user", "user[tier]"},
			"doc#viewer":   {"user", "user[within_limit]", "group#member"},
			"doc#admin":    {"user[tier]"},
			"doc#banned":   {"user[within_limit]"},
		},
		checks:   []string{"doc#view", "doc#strict", "doc#guarded"},
		subjects: []string{"user:user0", "user:user1", "user:user2", "user:user3", "user:user4"},
		contexts: []map[string]any{
			nil,
			{"amount": 50},
			{"amount": 500},
			{"level": 3},
			{"amount": 50, "level": 1},
			{"amount": 5, "limit": 10, "level": 2},
		},
		caveatContexts: map[string][]map[string]any{
			"within_limit": {nil, {"limit": 100}, {"limit": 10}, {"amount": 5, "limit": 10}},
			"tier":         {nil, {"level": 1}, {"level": 5}},
		},
	},
	{
		name: "expiration",
		schema: `use expiration

definition user {}

definition group {
	relation member: user | user with expiration
}

definition doc {
	relation viewer: user with expiration | group#member
	relation owner: user
	permission view = viewer + owner
	permission owner_and_viewer = viewer & owner
}
`,
		rels: map[string][]string{
			"group#member": {"user", "user[expiration]"},
			"doc#viewer":   {"user[expiration]", "group#member"},
			"doc#owner":    {"user"},
		},
		checks:   []string{"doc#view", "doc#owner_and_viewer"},
		subjects: []string{"user:user0", "user:user1", "user:user2", "user:user3", "user:user4"},
		contexts: []map[string]any{nil},
	},
	{
		name: "arrow functions and recursion",
		schema: `definition user {}

definition team {
	relation member: user | team#member
}

definition folder {
	relation parent: folder
	relation owners: team
	relation viewer: user
	permission all_owners = owners.all(member)
	permission any_owner = owners.any(member)
	permission view = viewer + parent->view + owners->member
}
`,
		rels: map[string][]string{
			"team#member":   {"user", "team#member"},
			"folder#parent": {"folder"},
			"folder#owners": {"team"},
			"folder#viewer": {"user"},
		},
		checks:   []string{"folder#all_owners", "folder#any_owner", "folder#view"},
		subjects: []string{"user:user0", "user:user1", "user:user2", "user:user3", "user:user4", "team:team2#member"},
		contexts: []map[string]any{nil},
	},
}

// generate draws a random relationship set for the case.
func (dc diffCase) generate(rng *rand.Rand, n int, now time.Time) []*v1.Relationship {
	keys := make([]string, 0, len(dc.rels))
	for k := range dc.rels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	seen := map[string]bool{}
	var out []*v1.Relationship
	for len(out) < n {
		key := keys[rng.IntN(len(keys))]
		resType, relation, _ := strings.Cut(key, "#")
		form := dc.rels[key][rng.IntN(len(dc.rels[key]))]
		resIdx := rng.IntN(5)
		r := &v1.Relationship{Resource: zobj(resType, fmt.Sprintf("%s%d", resType, resIdx)), Relation: relation}
		subForm, extra, _ := strings.Cut(strings.TrimSuffix(form, "]"), "[")
		subType, subRel, _ := strings.Cut(subForm, "#")
		subID := fmt.Sprintf("%s%d", subType, rng.IntN(5))
		if strings.HasSuffix(subType, ":*") {
			subType, subID = strings.TrimSuffix(subType, ":*"), "*"
		}
		if subType == resType {
			// Point only to higher IDs: no cycles.
			if resIdx == 4 {
				continue
			}
			subID = fmt.Sprintf("%s%d", subType, resIdx+1+rng.IntN(4-resIdx))
		}
		r.Subject = &v1.SubjectReference{Object: zobj(subType, subID), OptionalRelation: subRel}
		switch extra {
		case "":
		case "expiration":
			// Far enough either side of now that the clocks of both
			// systems agree.
			r.OptionalExpiresAt = timestampAt(now.Add(time.Duration(rng.IntN(2)*2-1) * time.Hour))
		default:
			contexts := dc.caveatContexts[extra]
			r.OptionalCaveat = &v1.ContextualizedCaveat{CaveatName: extra, Context: mustStruct(contexts[rng.IntN(len(contexts))])}
		}
		k := zrelText(&v1.Relationship{Resource: r.Resource, Relation: r.Relation, Subject: r.Subject})
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, r)
	}
	return out
}

// items lists every check of the case.
func (dc diffCase) items() []*v1.CheckBulkPermissionsRequestItem {
	var out []*v1.CheckBulkPermissionsRequestItem
	for _, check := range dc.checks {
		resType, perm, _ := strings.Cut(check, "#")
		for i := range 5 {
			for _, sub := range dc.subjects {
				for _, ctx := range dc.contexts {
					out = append(out, &v1.CheckBulkPermissionsRequestItem{
						Resource: zobj(resType, fmt.Sprintf("%s%d", resType, i)), Permission: perm, Subject: zsubj(sub), Context: mustStruct(ctx),
					})
				}
			}
		}
	}
	return out
}

func itemText(it *v1.CheckBulkPermissionsRequestItem) string {
	s := fmt.Sprintf("%s:%s#%s@%s:%s", it.GetResource().GetObjectType(), it.GetResource().GetObjectId(), it.GetPermission(),
		it.GetSubject().GetObject().GetObjectType(), it.GetSubject().GetObject().GetObjectId())
	if r := it.GetSubject().GetOptionalRelation(); r != "" {
		s += "#" + r
	}
	if c := it.GetContext(); c != nil {
		s += fmt.Sprint(c.AsMap())
	}
	return s
}

// answer is one system's answer to a check.
type answer struct {
	permissionship v1.CheckPermissionResponse_Permissionship
	missing        []string
	err            string
}

func (a answer) String() string {
	if a.err != "" {
		return "error: " + a.err
	}
	s := strings.TrimPrefix(a.permissionship.String(), "PERMISSIONSHIP_")
	if len(a.missing) > 0 {
		s += fmt.Sprint(a.missing)
	}
	return s
}

// bulkAnswers asks every item through CheckBulkPermissions, in chunks.
func bulkAnswers(t *testing.T, c *authzed.Client, items []*v1.CheckBulkPermissionsRequestItem) []answer {
	t.Helper()
	var out []answer
	for start := 0; start < len(items); start += 500 {
		chunk := items[start:min(start+500, len(items))]
		resp, err := c.CheckBulkPermissions(t.Context(), &v1.CheckBulkPermissionsRequest{Consistency: zfull, Items: chunk})
		if err != nil {
			t.Fatalf("CheckBulkPermissions: %v", err)
		}
		for _, p := range resp.GetPairs() {
			if e := p.GetError(); e != nil {
				out = append(out, answer{err: e.GetMessage()})
				continue
			}
			out = append(out, answer{permissionship: p.GetItem().GetPermissionship(), missing: sorted(p.GetItem().GetPartialCaveatInfo().GetMissingRequiredContext())})
		}
	}
	return out
}

// TestAuthzedDifferentialSpiceDB writes the same schemas and seeded random
// relationships to Mandate and to SpiceDB v1.56.1's own server through the
// same authzed-go client code, and requires the same permissionship from
// both for every check, through CheckBulkPermissions and CheckPermission.
func TestAuthzedDifferentialSpiceDB(t *testing.T) {
	const seedsPerCase = 3
	total, lookups, expansions, resourceLookups, reads := 0, 0, 0, 0, 0
	for ci, dc := range diffCases {
		t.Run(dc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			mandate := mandateClient(t, ts, testKey)
			spice := startSpiceDB(t)
			systems := []struct {
				name string
				c    *authzed.Client
			}{{"mandate", mandate}, {"spicedb", spice}}
			for _, sys := range systems {
				if _, err := sys.c.WriteSchema(t.Context(), &v1.WriteSchemaRequest{Schema: dc.schema}); err != nil {
					t.Fatalf("%s WriteSchema: %v", sys.name, err)
				}
			}
			items := dc.items()
			now := time.Now()
			// The answers must not all be alike, or the comparison proves
			// little.
			tally := map[v1.CheckPermissionResponse_Permissionship]int{}
			defer func() {
				t.Logf("SpiceDB's answers: %v", tally)
				if tally[v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION] == 0 || tally[v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION] == 0 {
					t.Errorf("degenerate case: answers %v", tally)
				}
				if len(dc.caveatContexts) > 0 && tally[v1.CheckPermissionResponse_PERMISSIONSHIP_CONDITIONAL_PERMISSION] == 0 {
					t.Errorf("caveats but no conditional answer: %v", tally)
				}
			}()
			for seed := range seedsPerCase {
				rng := rand.New(rand.NewPCG(uint64(ci), uint64(seed)))
				rels := dc.generate(rng, 20+rng.IntN(40), now)
				for _, sys := range systems {
					// Replace the previous seed's relationships.
					for _, typ := range []string{"doc", "folder", "group", "team"} {
						if !strings.Contains(dc.schema, "definition "+typ+" ") {
							continue
						}
						if _, err := sys.c.DeleteRelationships(t.Context(), &v1.DeleteRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: typ}}); err != nil {
							t.Fatalf("%s DeleteRelationships: %v", sys.name, err)
						}
					}
					if _, err := sys.c.WriteRelationships(t.Context(), &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, rels...)}); err != nil {
						t.Fatalf("seed %d: %s WriteRelationships: %v", seed, sys.name, err)
					}
				}
				got, want := bulkAnswers(t, mandate, items), bulkAnswers(t, spice, items)
				var relTexts []string
				for _, r := range rels {
					relTexts = append(relTexts, zrelText(r))
				}
				failures := 0
				for _, a := range want {
					tally[a.permissionship]++
				}
				for i, it := range items {
					if want[i].err != "" {
						t.Errorf("seed %d: SpiceDB failed %s: %s", seed, itemText(it), want[i].err)
						continue
					}
					// Permissionship must agree; the missing context is
					// compared too, as a set.
					if got[i].String() != want[i].String() {
						failures++
						if failures <= 5 {
							t.Errorf("seed %d: %s: mandate %v, spicedb %v", seed, itemText(it), got[i], want[i])
						}
					}
				}
				if failures > 0 {
					t.Errorf("seed %d: %d of %d checks differ; relationships:\n  %s", seed, failures, len(items), strings.Join(relTexts, "\n  "))
				}
				// CheckPermission answers as CheckBulkPermissions does.
				for i := 0; i < len(items); i += 7 {
					it := items[i]
					resp, err := mandate.CheckPermission(t.Context(), &v1.CheckPermissionRequest{Consistency: zfull, Resource: it.Resource, Permission: it.Permission, Subject: it.Subject, Context: it.Context})
					if err != nil {
						t.Fatalf("CheckPermission %s: %v", itemText(it), err)
					}
					single := answer{permissionship: resp.GetPermissionship(), missing: sorted(resp.GetPartialCaveatInfo().GetMissingRequiredContext())}
					if single.String() != want[i].String() {
						t.Errorf("seed %d: CheckPermission %s: mandate %v, spicedb %v", seed, itemText(it), single, want[i])
					}
				}
				total += len(items)
				lookups += compareLookupSubjects(t, seed, mandate, spice, items)
				expansions += compareExpand(t, seed, mandate, spice, items)
				resourceLookups += compareLookupResources(t, seed, mandate, spice, items)
				reads += compareReads(t, seed, dc.schema, mandate, spice, items)
			}
		})
	}
	t.Logf("%d checks, %d LookupResources, %d LookupSubjects, %d ExpandPermissionTree and %d ReadRelationships compared over %d schemas x %d seeded relationship sets",
		total, resourceLookups, lookups, expansions, reads, len(diffCases), seedsPerCase)
}

// compareReads reads every resource type's relationships from both servers,
// unfiltered and filtered by each subject the checks name, and requires the
// same relationships (caveats, contexts and expirations included). It
// returns how many reads it compared.
func compareReads(t *testing.T, seed int, schemaText string, mandate, spice *authzed.Client, items []*v1.CheckBulkPermissionsRequestItem) int {
	t.Helper()
	var filters []*v1.RelationshipFilter
	for _, typ := range []string{"doc", "folder", "group", "team"} {
		if !strings.Contains(schemaText, "definition "+typ+" ") {
			continue
		}
		filters = append(filters, &v1.RelationshipFilter{ResourceType: typ})
		seen := map[string]bool{}
		for _, it := range items {
			sub := it.GetSubject()
			f := &v1.RelationshipFilter{ResourceType: typ, OptionalSubjectFilter: &v1.SubjectFilter{
				SubjectType: sub.GetObject().GetObjectType(), OptionalSubjectId: sub.GetObject().GetObjectId()}}
			if seen[f.String()] {
				continue
			}
			seen[f.String()] = true
			filters = append(filters, f)
		}
	}
	for _, f := range filters {
		got, want := readText(t, mandate, f), readText(t, spice, f)
		if got != want {
			t.Errorf("seed %d: ReadRelationships %v:\n  mandate %s\n  spicedb %s", seed, f, got, want)
		}
	}
	return len(filters)
}

func readText(t *testing.T, c *authzed.Client, f *v1.RelationshipFilter) string {
	t.Helper()
	stream, err := c.ReadRelationships(t.Context(), &v1.ReadRelationshipsRequest{Consistency: zfull, RelationshipFilter: f})
	if err != nil {
		t.Fatalf("ReadRelationships: %v", err)
	}
	var out []string
	for _, resp := range recvAll(t, stream) {
		s := zrelText(resp.GetRelationship())
		if e := resp.GetRelationship().GetOptionalExpiresAt(); e != nil {
			s += "[expires " + e.AsTime().UTC().Format(time.RFC3339Nano) + "]"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return "[" + strings.Join(out, " ") + "]"
}

// compareLookupResources asks both servers LookupResources for every
// (resource type, permission, subject, context) the checks name and
// requires the same resources with the same permissionship and missing
// context. It returns how many lookups it compared.
func compareLookupResources(t *testing.T, seed int, mandate, spice *authzed.Client, items []*v1.CheckBulkPermissionsRequestItem) int {
	t.Helper()
	return forEachDistinct(items, func(it *v1.CheckBulkPermissionsRequestItem) (*v1.LookupResourcesRequest, bool) {
		return &v1.LookupResourcesRequest{Consistency: zfull, ResourceObjectType: it.GetResource().GetObjectType(),
			Permission: it.GetPermission(), Subject: it.GetSubject(), Context: it.GetContext()}, true
	}, func(req *v1.LookupResourcesRequest) {
		got, want := lookupResourcesText(t, mandate, req), lookupResourcesText(t, spice, req)
		if got != want {
			t.Errorf("seed %d: LookupResources %s#%s for %s (context %v):\n  mandate %s\n  spicedb %s", seed,
				req.GetResourceObjectType(), req.GetPermission(), req.GetSubject().GetObject().GetObjectType()+":"+req.GetSubject().GetObject().GetObjectId()+"#"+req.GetSubject().GetOptionalRelation(), req.GetContext().AsMap(), got, want)
		}
	})
}

func lookupResourcesText(t *testing.T, c *authzed.Client, req *v1.LookupResourcesRequest) string {
	t.Helper()
	stream, err := c.LookupResources(t.Context(), req)
	if err != nil {
		t.Fatalf("LookupResources: %v", err)
	}
	// SpiceDB may return a resource once per path that reaches it (its
	// documentation allows duplicates): a resource's answer is its best one,
	// and a conditional answer lacks what any of its paths lacks.
	best := map[string]*v1.LookupResourcesResponse{}
	for _, resp := range recvAll(t, stream) {
		id := resp.GetResourceObjectId()
		prev := best[id]
		switch {
		case prev == nil || resp.GetPermissionship() == v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_HAS_PERMISSION:
			best[id] = resp
		case prev.GetPermissionship() == v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_CONDITIONAL_PERMISSION:
			missing := append(slices.Clone(prev.GetPartialCaveatInfo().GetMissingRequiredContext()), resp.GetPartialCaveatInfo().GetMissingRequiredContext()...)
			slices.Sort(missing)
			prev.PartialCaveatInfo = &v1.PartialCaveatInfo{MissingRequiredContext: slices.Compact(missing)}
		}
	}
	var out []string
	for id, resp := range best {
		s := id + ":" + resp.GetPermissionship().String()
		if m := sorted(resp.GetPartialCaveatInfo().GetMissingRequiredContext()); len(m) > 0 {
			s += fmt.Sprint(m)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return "[" + strings.Join(out, " ") + "]"
}

// compareExpand asks both servers ExpandPermissionTree for every (resource,
// permission) the checks name and requires the same tree: node labels,
// operations, and leaf subjects in the same order. It returns how many
// expansions it compared.
func compareExpand(t *testing.T, seed int, mandate, spice *authzed.Client, items []*v1.CheckBulkPermissionsRequestItem) int {
	t.Helper()
	return forEachDistinct(items, func(it *v1.CheckBulkPermissionsRequestItem) (*v1.ExpandPermissionTreeRequest, bool) {
		return &v1.ExpandPermissionTreeRequest{Consistency: zfull, Resource: it.GetResource(), Permission: it.GetPermission()}, true
	}, func(req *v1.ExpandPermissionTreeRequest) {
		got, gerr := mandate.ExpandPermissionTree(t.Context(), req)
		want, werr := spice.ExpandPermissionTree(t.Context(), req)
		name := req.GetResource().GetObjectType() + ":" + req.GetResource().GetObjectId() + "#" + req.GetPermission()
		switch {
		case (gerr != nil) != (werr != nil):
			t.Errorf("seed %d: ExpandPermissionTree %s: mandate error %v, spicedb error %v", seed, name, gerr, werr)
		case gerr == nil && !proto.Equal(got.GetTreeRoot(), want.GetTreeRoot()):
			t.Errorf("seed %d: ExpandPermissionTree %s differs:\n  mandate %v\n  spicedb %v", seed, name, got.GetTreeRoot(), want.GetTreeRoot())
		}
	})
}

// compareLookupSubjects asks both servers LookupSubjects for every
// (resource, permission, context) the checks name and every plain subject
// type they use, and requires the same subjects named, with the same
// permissionship, missing context and wildcard exclusions. It returns how
// many lookups it compared.
func compareLookupSubjects(t *testing.T, seed int, mandate, spice *authzed.Client, items []*v1.CheckBulkPermissionsRequestItem) int {
	t.Helper()
	return forEachDistinct(items, func(it *v1.CheckBulkPermissionsRequestItem) (*v1.LookupSubjectsRequest, bool) {
		return &v1.LookupSubjectsRequest{Consistency: zfull, Resource: it.GetResource(), Permission: it.GetPermission(),
			SubjectObjectType: it.GetSubject().GetObject().GetObjectType(), Context: it.GetContext()}, it.GetSubject().GetOptionalRelation() == ""
	}, func(req *v1.LookupSubjectsRequest) {
		got, want := lookupSubjectsText(t, mandate, req), lookupSubjectsText(t, spice, req)
		if got != want {
			t.Errorf("seed %d: LookupSubjects %s#%s for %s (context %v):\n  mandate %s\n  spicedb %s", seed,
				req.GetResource().GetObjectType()+":"+req.GetResource().GetObjectId(), req.GetPermission(), req.GetSubjectObjectType(), req.GetContext().AsMap(), got, want)
		}
	})
}

// forEachDistinct builds a request from each item (skipping those build
// declines), calls compare once per distinct request, and returns how many
// it compared.
func forEachDistinct[R interface{ String() string }](items []*v1.CheckBulkPermissionsRequestItem, build func(*v1.CheckBulkPermissionsRequestItem) (R, bool), compare func(R)) int {
	seen := map[string]bool{}
	for _, it := range items {
		req, ok := build(it)
		if !ok || seen[req.String()] {
			continue
		}
		seen[req.String()] = true
		compare(req)
	}
	return len(seen)
}

// lookupSubjectsText renders a LookupSubjects answer canonically: each
// subject sorted, with its permissionship, missing context and exclusions.
func lookupSubjectsText(t *testing.T, c *authzed.Client, req *v1.LookupSubjectsRequest) string {
	t.Helper()
	stream, err := c.LookupSubjects(t.Context(), req)
	if err != nil {
		t.Fatalf("LookupSubjects: %v", err)
	}
	resolved := func(r *v1.ResolvedSubject) string {
		s := r.GetSubjectObjectId() + ":" + r.GetPermissionship().String()
		if m := sorted(r.GetPartialCaveatInfo().GetMissingRequiredContext()); len(m) > 0 {
			s += fmt.Sprint(m)
		}
		return s
	}
	var out []string
	for _, resp := range recvAll(t, stream) {
		s := resolved(resp.GetSubject())
		var excluded []string
		for _, x := range resp.GetExcludedSubjects() {
			excluded = append(excluded, resolved(x))
		}
		if len(excluded) > 0 {
			slices.Sort(excluded)
			s += " except " + strings.Join(excluded, ",")
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return "[" + strings.Join(out, " ") + "]"
}

func timestampAt(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
