package workload

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store/rel"
)

// TestStreamIsGenerate: the streamed workload is Generate's, relationship
// for relationship, with the same checks and lookups.
func TestStreamIsGenerate(t *testing.T) {
	cfg := small()
	w, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got []rel.Relationship
	s, err := Stream(cfg, func(r rel.Relationship) error { got = append(got, r); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, w.Rels) || !reflect.DeepEqual(s.Checks, w.Checks) || len(s.Rels) != 0 {
		t.Fatalf("Stream emitted %d relationships and %d checks, Generate %d and %d", len(got), len(s.Checks), len(w.Rels), len(w.Checks))
	}
}

// TestDistinctAboveThePermutationThreshold: large group counts draw
// distinct groups without a permutation per user.
func TestDistinctAboveThePermutationThreshold(t *testing.T) {
	cfg := small()
	cfg.Groups, cfg.Users = 2*permThreshold, 2_000
	w, err := Stream(cfg, func(rel.Relationship) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if w.Config.Groups <= permThreshold {
		t.Fatalf("%d groups: not above the threshold", w.Config.Groups)
	}
	for u, gs := range w.userGroups {
		seen := map[int32]bool{}
		for _, g := range gs {
			if seen[g] {
				t.Fatalf("user %d is in group %d twice", u, g)
			}
			seen[g] = true
		}
		if len(gs) < 1 || len(gs) > 3 {
			t.Fatalf("user %d is in %d groups, want 1-3", u, len(gs))
		}
	}
}

func TestScaleAgents(t *testing.T) {
	from := time.Unix(1_800_000_000, 0)
	within := time.Minute
	var links []rel.Relationship
	chains, n, err := ScaleAgents(1, 10_000, 500, from, within, func(r rel.Relationship) error { links = append(links, r); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if n != 10_000 || len(links) != n+1 { // + the agent:* folder grant
		t.Fatalf("%d links reported, %d emitted, want 10,000 (+1)", n, len(links))
	}
	expiring := 0
	for _, l := range links[1:] {
		if l.Relation != "acts_for" || l.Caveat == nil || l.Caveat.Name != "delegation_scope" {
			t.Fatalf("link %s: not a scoped acts_for", l)
		}
		if !l.Expiration.IsZero() {
			expiring++
			if l.Expiration.Before(from) || !l.Expiration.Before(from.Add(within+time.Nanosecond)) {
				t.Fatalf("link %s expires outside [from, from+within]", l)
			}
		}
	}
	if expiring < 800 || expiring > 1200 {
		t.Errorf("%d of 10,000 links expire, want about a tenth", expiring)
	}
	lengths := map[int]int{}
	for _, c := range chains {
		_, i, _ := strings.Cut(c.Agent.ID, "_")
		lengths[int(i[0]-'0')+1]++ // the last agent is cK_(length-1)
		if c.Principal.Type != UserType {
			t.Fatalf("chain %s acts for %s, not a user", c.Agent, c.Principal)
		}
	}
	if lengths[1] == 0 || lengths[2] == 0 || lengths[3] == 0 || len(lengths) != 3 {
		t.Errorf("chain lengths %v, want 1, 2 and 3", lengths)
	}
	if _, err := schema.Compile(context.Background(), ScaleSchema); err != nil {
		t.Errorf("ScaleSchema: %v", err)
	}
}
