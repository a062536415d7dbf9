package audit_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/server/audit"
)

// queryTrail is a small mixed trail: delegated checks for alice (seq 1-6),
// direct checks by bob and alice, a denied chain that never reached a
// person, a relationship write.
func queryTrail() []*audit.Event {
	evs := events(6) // agent:b -> agent:a -> user:alice on doc:d0..d2
	evs = append(evs,
		personEvent(6, "user:bob", audit.Denied),    // seq 7
		personEvent(7, "user:alice", audit.Allowed), // seq 8
		&audit.Event{ // seq 9: agent:c acts for nobody
			Time: t0.Add(8 * time.Second), Caller: "billing", Operation: audit.OpCheck, Resource: "doc:d0", Permission: "view",
			Subject: "agent:c", SubjectKind: audit.Agent, Chain: []audit.Link{{Subject: "agent:c", Failed: true}},
			Decision: audit.Denied, Reason: "no_delegation",
		},
		&audit.Event{ // seq 10: a delegation written to agent:b
			Time: t0.Add(9 * time.Second), Caller: "admin", Operation: audit.OpWriteRelationships, Update: "touch",
			Resource: "agent:b", Permission: "acts_for", Subject: "agent:a", SubjectKind: audit.Agent, Decision: audit.OK,
		},
	)
	return evs
}

func seqs(evs []*audit.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

func TestQueryFilters(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 1500, queryTrail()...) // several files
	for _, tc := range []struct {
		name string
		q    audit.Query
		want []uint64
	}{
		{"everything", audit.Query{}, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"principal: direct and through the chain", audit.Query{Principal: "user:alice"}, []uint64{1, 2, 3, 4, 5, 6, 8}},
		{"agent in the middle of the chain", audit.Query{Agent: "agent:a"}, []uint64{1, 2, 3, 4, 5, 6, 10}},
		{"agent as subject, and delegations to it", audit.Query{Agent: "agent:b"}, []uint64{1, 2, 3, 4, 5, 6, 10}},
		{"agent whose chain failed", audit.Query{Agent: "agent:c"}, []uint64{9}},
		{"principal is never an agent", audit.Query{Agent: "user:alice"}, nil},
		{"resource exact", audit.Query{Resource: "doc:d0"}, []uint64{1, 4, 9}},
		{"resource type", audit.Query{Resource: "folder"}, []uint64{7, 8}},
		{"decision denied", audit.Query{Decisions: []audit.Decision{audit.Denied}}, []uint64{7, 9}},
		{"decisions allowed or ok", audit.Query{Decisions: []audit.Decision{audit.OK, audit.Denied}, Caller: "admin"}, []uint64{10}},
		{"operation", audit.Query{Operations: []audit.Operation{audit.OpWriteRelationships}}, []uint64{10}},
		{"subject", audit.Query{Subject: "user:bob"}, []uint64{7}},
		{"time range", audit.Query{Since: t0.Add(2 * time.Second), Until: t0.Add(5 * time.Second)}, []uint64{3, 4, 5}},
		{"combined", audit.Query{Principal: "user:alice", Resource: "doc:d1", Since: t0.Add(2 * time.Second)}, []uint64{5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := tc.q
			q.Limit = 100
			p, err := audit.QueryDir(ctx(t), dir, q)
			if err != nil {
				t.Fatal(err)
			}
			if got := seqs(p.Events); !slices.Equal(got, tc.want) {
				t.Errorf("got seqs %v, want %v", got, tc.want)
			}
			if p.Next != "" {
				t.Errorf("Next %q on a complete answer", p.Next)
			}
		})
	}
}

func TestQueryPaging(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 1500, queryTrail()...)
	for _, desc := range []bool{false, true} {
		var got []uint64
		q := audit.Query{Principal: "user:alice", Limit: 3, Descending: desc}
		for pages := 0; ; pages++ {
			if pages > 5 {
				t.Fatal("paging does not end")
			}
			p, err := audit.QueryDir(ctx(t), dir, q)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Events) > 3 {
				t.Fatalf("page of %d events with limit 3", len(p.Events))
			}
			got = append(got, seqs(p.Events)...)
			if p.Next == "" {
				break
			}
			q.After = p.Next
		}
		want := []uint64{1, 2, 3, 4, 5, 6, 8}
		if desc {
			slices.Reverse(want)
		}
		if !slices.Equal(got, want) {
			t.Errorf("descending=%v: pages gave %v, want %v", desc, got, want)
		}
	}
}

func TestQueryValidation(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 0, events(1)...)
	for _, tc := range []struct {
		q    audit.Query
		want string
	}{
		{audit.Query{Limit: 5000}, "limit: 5000 is over the maximum of 1000"},
		{audit.Query{Limit: -1}, "limit: -1 is negative"},
		{audit.Query{Agent: "agentb"}, `agent: "agentb": expected type:id`},
		{audit.Query{Principal: "user:alice#member"}, "principal"},
		{audit.Query{Decisions: []audit.Decision{"maybe"}}, `decision: "maybe"`},
		{audit.Query{Since: t0, Until: t0}, "until"},
		{audit.Query{After: "x"}, `after: "x" is not a cursor`},
	} {
		if _, err := audit.QueryDir(ctx(t), dir, tc.q); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error mentioning %q", tc.q, err, tc.want)
		}
	}
}

func TestRedaction(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	r, err := audit.NewRedactor([]string{"email", "ssn"}, secret)
	if err != nil {
		t.Fatal(err)
	}
	in := map[string]any{
		"email":  "alice@example.com",
		"amount": 10.0,
		"nested": map[string]any{"ssn": "123-45-6789", "keep": "yes"},
		"list":   []any{map[string]any{"email": "bob@example.com"}},
	}
	before, _ := json.Marshal(in)
	out := r.Apply(in)
	after, _ := json.Marshal(in)
	if string(before) != string(after) {
		t.Errorf("Apply modified its input")
	}
	digest := out["email"].(string)
	if !strings.HasPrefix(digest, "hmac-sha256:") || strings.Contains(digest, "alice") || len(digest) != len("hmac-sha256:")+8+1+32 {
		t.Errorf("email redacted as %q", digest)
	}
	if out["amount"] != 10.0 || out["nested"].(map[string]any)["keep"] != "yes" {
		t.Errorf("unlisted keys changed: %v", out)
	}
	if s := out["nested"].(map[string]any)["ssn"].(string); !strings.HasPrefix(s, "hmac-sha256:") {
		t.Errorf("nested key not redacted: %q", s)
	}
	if s := out["list"].([]any)[0].(map[string]any)["email"].(string); !strings.HasPrefix(s, "hmac-sha256:") {
		t.Errorf("key inside a list not redacted: %q", s)
	}
	// Equal values give equal digests (correlation); another secret gives
	// others (no dictionary test without the secret).
	if again := r.Apply(map[string]any{"email": "alice@example.com"})["email"]; again != digest {
		t.Errorf("same value, different digests: %v, %v", again, digest)
	}
	other, _ := audit.NewRedactor([]string{"email"}, []byte("another secret, long enough....."))
	if d := other.Apply(map[string]any{"email": "alice@example.com"})["email"]; d == digest {
		t.Errorf("different secrets gave the same digest")
	}
	if _, err := audit.NewRedactor([]string{"email"}, []byte("short")); err == nil {
		t.Errorf("a 5-byte secret was accepted")
	}
	if _, err := audit.NewRedactor([]string{"email", " "}, secret); err == nil || !strings.Contains(err.Error(), "redaction key 2 of 2 is empty") {
		t.Errorf("empty key: %v", err)
	}
	none, err := audit.NewRedactor(nil, nil)
	if err != nil || none.Active() {
		t.Errorf("no keys: %v active=%v", err, none.Active())
	}
}

func TestRedactionInTrail(t *testing.T) {
	dir := t.TempDir()
	secretPath := dir + "/redact.key"
	secret, err := audit.LoadOrCreateSecret(secretPath)
	if err != nil || len(secret) != audit.SecretSize {
		t.Fatalf("LoadOrCreateSecret: %v (%d bytes)", err, len(secret))
	}
	if again, _ := audit.LoadOrCreateSecret(secretPath); string(again) != string(secret) {
		t.Errorf("the secret changed on reload")
	}
	r, _ := audit.NewRedactor([]string{"task"}, secret)
	sink, err := audit.OpenFileSink(dir+"/trail", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, _ := audit.New(ctx(t), audit.Options{Sink: sink, Redactor: r})
	l.Record(ctx(t), checkEvent(0))
	l.Close(ctx(t))
	p, err := audit.QueryDir(ctx(t), dir+"/trail", audit.Query{})
	if err != nil || len(p.Events) != 1 {
		t.Fatalf("query: %v %v", p, err)
	}
	if v := p.Events[0].Context["task"].(string); v == "T-0" || !strings.HasPrefix(v, "hmac-sha256:") {
		t.Errorf("task context written as %q", v)
	}
}

func TestOCSF(t *testing.T) {
	ev := checkEvent(1)
	ev.Source = "10.0.0.7:51234"
	ev.Seq, ev.Hash, ev.PrevHash = 7, strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	o := audit.ToOCSF(ev)
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	get := func(path string) any {
		var cur any = m
		for _, k := range strings.Split(path, ".") {
			switch c := cur.(type) {
			case map[string]any:
				cur = c[k]
			case []any:
				cur = c[0].(map[string]any)[k]
			default:
				return nil
			}
		}
		return cur
	}
	for path, want := range map[string]any{
		"class_uid":                               6003.0,
		"class_name":                              "API Activity",
		"category_uid":                            6.0,
		"activity_id":                             2.0,
		"type_uid":                                600302.0,
		"time":                                    float64(t0.Add(time.Second).UnixMilli()),
		"severity_id":                             1.0,
		"status_id":                               1.0,
		"metadata.version":                        audit.OCSFVersion,
		"metadata.product.name":                   "Mandate",
		"metadata.uid":                            ev.Hash,
		"metadata.correlation_uid":                "req-1",
		"actor.user.uid":                          "user:alice",
		"actor.user.name":                         "alice",
		"actor.app_name":                          "billing",
		"actor.authorizations.decision":           "allowed",
		"api.operation":                           "Check",
		"api.service.name":                        "mandate.v1.PermissionService",
		"api.request.uid":                         "req-1",
		"resources.uid":                           "doc:d1",
		"resources.type":                          "doc",
		"src_endpoint.ip":                         "10.0.0.7",
		"src_endpoint.port":                       51234.0,
		"unmapped.ai_agent.uid":                   "agent:b",
		"unmapped.mandate.subject":                "agent:b",
		"unmapped.mandate.revision":               11.0,
		"unmapped.mandate.chain.subject":          "agent:b",
		"unmapped.mandate.seq":                    7.0,
		"unmapped.mandate.prev_hash":              ev.PrevHash,
		"unmapped.mandate.context.task":           "T-1",
		"unmapped.mandate.subject_kind":           "agent",
		"unmapped.mandate.principal":              "user:alice",
		"unmapped.mandate.decision":               "allowed",
		"unmapped.mandate.chain.grant":            "allowed",
		"unmapped.mandate.operation":              "check",
		"unmapped.mandate.permission":             "view",
		"actor.user.type":                         "User",
		"metadata.log_name":                       "audit",
		"activity_name":                           "Read",
		"unmapped.mandate.hash":                   ev.Hash,
		"api.service":                             map[string]any{"name": "mandate.v1.PermissionService"},
		"unmapped.mandate.chain.link":             "allowed",
		"metadata.product.vendor_name":            "Mandate",
		"status":                                  "Success",
		"category_name":                           "Application Activity",
		"type_name":                               "API Activity: Read",
		"severity":                                "Informational",
		"unmapped.ai_agent.name":                  "b",
		"resources.name":                          "d1",
		"actor.user.type_id":                      1.0,
		"unmapped.mandate.chain.missing":          nil,
		"unmapped.mandate.resolvable_by_approval": nil,
	} {
		got := get(path)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		if string(gb) != string(wb) {
			t.Errorf("%s = %s, want %s", path, gb, wb)
		}
	}
	if chain := get("unmapped.mandate.chain").([]any); len(chain) != 3 {
		t.Errorf("chain has %d members, want 3", len(chain))
	}
	if msg := o.Message; !strings.Contains(msg, "agent:b -> agent:a -> user:alice") || !strings.Contains(msg, "allowed") {
		t.Errorf("message %q", msg)
	}

	// A relationship delete is a Delete activity; the actor is the caller
	// only (the relationship's subject did not act).
	del := audit.ToOCSF(&audit.Event{Time: t0, Caller: "admin", Operation: audit.OpWriteRelationships, Update: "delete",
		Resource: "doc:1", Permission: "viewer", Subject: "user:bob", SubjectKind: audit.Person, Decision: audit.OK})
	if del.ActivityID != 4 || del.TypeUID != 600304 || del.Actor.User != nil || del.Actor.AppName != "admin" || del.SrcEndpoint.Name == "" {
		t.Errorf("delete: %+v", del)
	}
	denied := audit.ToOCSF(&audit.Event{Time: t0, Operation: audit.OpCheck, Decision: audit.Denied, Reason: "agent_not_granted"})
	if denied.StatusID != 2 || denied.StatusDetail != "agent_not_granted" {
		t.Errorf("denied: status %d %q", denied.StatusID, denied.StatusDetail)
	}
}
