package capability

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	biscuit "github.com/biscuit-auth/biscuit-go/v2"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// appendRaw appends a block to text through biscuit-go directly, skipping
// Attenuate's refusals, as an attacker holding the token could.
func appendRaw(t *testing.T, text string, b Block, extra func(biscuit.BlockBuilder)) string {
	t.Helper()
	tok, err := Inspect(text)
	if err != nil {
		t.Fatal(err)
	}
	ctx, checks, err := blockContent(&b)
	if err != nil {
		t.Fatal(err)
	}
	bb := tok.biscuit.CreateBlock()
	for _, c := range checks {
		if err := bb.AddCheck(c); err != nil {
			t.Fatal(err)
		}
	}
	bb.SetContext(ctx)
	if extra != nil {
		extra(bb)
	}
	next, err := tok.biscuit.Append(rand.Reader, bb.Build())
	if err != nil {
		t.Fatal(err)
	}
	out, err := (&Token{biscuit: next}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func childBlock(t *testing.T, parentText string) Block {
	t.Helper()
	tok, err := Inspect(parentText)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := newBlockID()
	return Block{Version: descriptorVersion, ID: id, Parent: tok.ID(), IssuedAt: time.Now().UTC().Truncate(time.Second)}
}

func reencode(t *testing.T, text string, edit func(raw []byte) []byte) string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(edit(raw))
}

// Every kind of bad token is a clear denial naming its reason, never an
// allow and never a crash.
func TestBadTokens(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	good := f.mint(bobRead)
	otherKey, _ := GenerateKey("k1", time.Now())
	otherKeys, _ := NewKeySet(otherKey)
	foreign, err := Mint(otherKeys, bobRead, f.clock.now())
	if err != nil {
		t.Fatal(err)
	}
	foreignText, _ := foreign.Encode()
	unknownKey, _ := GenerateKey("k9", time.Now())
	unknownKeys, _ := NewKeySet(unknownKey)
	unknown, _ := Mint(unknownKeys, bobRead, f.clock.now())
	unknownText, _ := unknown.Encode()

	wider := childBlock(t, good)
	wider.Rights = []Right{{Type: "calendar", ID: "bob", Permissions: []string{"read", "write"}}}
	widerText := appendRaw(t, good, wider, nil)

	later := childBlock(t, good)
	later.Expires = f.clock.now().Add(24 * time.Hour).UTC()
	laterText := appendRaw(t, good, later, nil)

	reparent := childBlock(t, good)
	reparent.Parent = strings.Repeat("0", 32)
	reparentText := appendRaw(t, good, reparent, nil)

	principal := childBlock(t, good)
	principal.OnBehalfOf = "user:alice"
	principalText := appendRaw(t, good, principal, nil)

	withFact := appendRaw(t, good, childBlock(t, good), func(bb biscuit.BlockBuilder) {
		_ = bb.AddFact(biscuit.Fact{Predicate: biscuit.Predicate{Name: "right", IDs: []biscuit.Term{biscuit.String("calendar:alice")}}})
	})
	withRule := appendRaw(t, good, childBlock(t, good), func(bb biscuit.BlockBuilder) {
		_ = bb.AddRule(biscuit.Rule{Head: biscuit.Predicate{Name: "resource", IDs: []biscuit.Term{biscuit.String("calendar"), biscuit.String("alice")}},
			Body: []biscuit.Predicate{{Name: "permission", IDs: []biscuit.Term{biscuit.Variable("p")}}}})
	})
	noDescriptor := func() string {
		tok, _ := Inspect(good)
		bb := tok.biscuit.CreateBlock()
		next, _ := tok.biscuit.Append(rand.Reader, bb.Build())
		s, _ := (&Token{biscuit: next}).Encode()
		return s
	}()
	extraField := func() string {
		b := childBlock(t, good)
		ctx, _ := json.Marshal(b)
		var m map[string]any
		_ = json.Unmarshal(ctx, &m)
		m["admin"] = true
		ctx, _ = json.Marshal(m)
		tok, _ := Inspect(good)
		bb := tok.biscuit.CreateBlock()
		bb.SetContext(string(ctx))
		next, _ := tok.biscuit.Append(rand.Reader, bb.Build())
		s, _ := (&Token{biscuit: next}).Encode()
		return s
	}()
	// A check an attacker adds can only narrow: a foreign check that can
	// never hold denies.
	foreignCheck := appendRaw(t, good, childBlock(t, good), func(bb biscuit.BlockBuilder) {
		_ = bb.AddCheck(biscuit.Check{Queries: []biscuit.Rule{{Head: biscuit.Predicate{Name: "query"},
			Body: []biscuit.Predicate{{Name: "time", IDs: []biscuit.Term{biscuit.Variable("t")}}}}}})
	})

	cases := []struct {
		name   string
		token  string
		reason Reason
	}{
		{"empty", "", ReasonMalformed},
		{"not base64", "***", ReasonMalformed},
		{"base64 of garbage", base64.RawURLEncoding.EncodeToString([]byte("hello, world")), ReasonMalformed},
		{"empty container", base64.RawURLEncoding.EncodeToString(nil), ReasonMalformed},
		{"truncated", good[:len(good)/2], ReasonMalformed},
		{"truncated by one byte", reencode(t, good, func(raw []byte) []byte { return raw[:len(raw)-1] }), ReasonMalformed},
		{"signed by another key with the same id", foreignText, ReasonBadSignature},
		{"unknown key id", unknownText, ReasonUnknownKey},
		{"widening rights", widerText, ReasonWidening},
		{"widening expiry", laterText, ReasonWidening},
		{"wrong parent", reparentText, ReasonWidening},
		{"attenuation names a principal", principalText, ReasonWidening},
		{"block with a fact", withFact, ReasonUnknownFacts},
		{"block with a rule", withRule, ReasonUnknownFacts},
		{"block without descriptor", noDescriptor, ReasonUnknownFacts},
		{"descriptor with an unknown field", extraField, ReasonUnknownFacts},
		{"foreign check", foreignCheck, ReasonCheckFailed},
		{"over-long", strings.Repeat("A", MaxTokenLength+1), ReasonTooLong},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := f.check(tc.token, "calendar:bob#read", "agent:a", 0)
			if d.Allowed || d.Conditional || d.Reason != tc.reason {
				t.Fatalf("decision %+v, want a denial with reason %s", d, tc.reason)
			}
			if d.Detail == "" {
				t.Fatal("no detail for the denial")
			}
		})
	}
}

// Flipping any single byte of a token never yields an allow.
func TestEveryTamperedByteDenies(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	child := f.attenuate(f.mint(bobRead), Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"}})
	raw, _ := base64.RawURLEncoding.DecodeString(child)
	for i := range raw {
		for _, mask := range []byte{0x01, 0x80} {
			tampered := append([]byte(nil), raw...)
			tampered[i] ^= mask
			text := base64.RawURLEncoding.EncodeToString(tampered)
			for _, subject := range []string{"agent:b", "agent:a"} {
				if d := f.check(text, "calendar:bob#read", subject, 0); d.Allowed {
					// The only byte flips allowed to pass are those
					// protobuf ignores; there must be none here.
					t.Fatalf("byte %d ^ %#x allowed %s: %+v", i, mask, subject, d)
				}
			}
		}
	}
}

// A token for a type the schema no longer defines is denied.
func TestDeletedSchemaType(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob", "doc:1#viewer@user:bob")
	g := bobRead
	g.Rights = []Right{{Type: "doc", ID: "1", Permissions: []string{"view"}}}
	tok := f.mint(g)
	f.expect(f.check(tok, "doc:1#view", "agent:a", 0), true, ReasonNone, 0)
	f.write(store.Delete, "doc:1#viewer@user:bob")
	rev, err := f.st.WriteSchema(f.ctx, strings.Replace(testSchema, "definition doc {\n\trelation viewer: user\n\tpermission view = viewer\n}", "", 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.eng.WaitForRevision(f.ctx, rev); err != nil {
		t.Fatal(err)
	}
	f.expect(f.check(tok, "doc:1#view", "agent:a", rev), false, ReasonUnknownType, 0)
	// A holder whose type stops being an agent type is refused as well.
	f2 := newFixture(t, "calendar:bob#owner@user:bob")
	tok2 := f2.mint(bobRead)
	rev, err = f2.st.WriteSchema(f2.ctx, strings.Replace(testSchema, "relation acts_for: user | agent", "relation owner: user", 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := f2.eng.WaitForRevision(f2.ctx, rev); err != nil {
		t.Fatal(err)
	}
	f2.expect(f2.check(tok2, "calendar:bob#read", "agent:a", rev), false, ReasonUnknownType, 0)
}
