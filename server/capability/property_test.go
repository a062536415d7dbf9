package capability

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// Random attenuation chains never allow what their parent denies: for
// every request, if a token allows it for its holder, the token it was
// derived from allows it for its own holder. Widening attempts through
// Attenuate are refused, and the same blocks appended behind its back
// fail verification.
func TestAttenuationNeverWidens(t *testing.T) {
	keys := testKeys(t)
	start := time.Now().Truncate(time.Second)
	now := start
	v := NewVerifier(keys, VerifierOptions{Now: func() time.Time { return now }})
	types := []string{"calendar", "doc"}
	ids := []string{"1", "2", "3"}
	perms := []string{"read", "write", "share"}
	tasks := []string{"", "T1", "T2"}
	randRight := func(r *rand.Rand) Right {
		rt := Right{Type: types[r.IntN(len(types))]}
		if r.IntN(3) > 0 {
			rt.ID = ids[r.IntN(len(ids))]
		}
		for _, p := range perms {
			if r.IntN(2) == 0 {
				rt.Permissions = append(rt.Permissions, p)
			}
		}
		if len(rt.Permissions) == 0 {
			rt.Permissions = []string{perms[r.IntN(len(perms))]}
		}
		return rt
	}
	var requests []Request
	for _, typ := range types {
		for _, id := range ids {
			for _, p := range perms {
				for _, task := range tasks {
					requests = append(requests, Request{Resource: rel.Object{Type: typ, ID: id}, Permission: p, Task: task})
				}
			}
		}
	}
	allows := func(tok *Token, req Request, at time.Time) bool {
		text, err := tok.Encode()
		if err != nil {
			t.Fatal(err)
		}
		now = at
		vt, err := v.Verify(text)
		if err != nil {
			return false
		}
		holder, _ := parseObject(tok.Holder())
		req.Holder = holder
		_, err = v.Allow(vt, req)
		return err == nil
	}
	const chains = 25
	childAllowed := 0
	for seed := range uint64(chains) {
		r := rand.New(rand.NewPCG(seed, 14))
		now = start
		g := Grant{Holder: rel.Object{Type: "agent", ID: "a0"}, OnBehalfOf: rel.Object{Type: "user", ID: "u"}, TTL: time.Duration(1+r.IntN(60)) * time.Minute}
		for range 1 + r.IntN(3) {
			g.Rights = append(g.Rights, randRight(r))
		}
		if r.IntN(3) == 0 {
			g.Task = tasks[1+r.IntN(2)]
		}
		tok, err := Mint(keys, g, now)
		if err != nil {
			t.Fatalf("seed %d: Mint: %v", seed, err)
		}
		for depth := 1; depth < 6; depth++ {
			n := Narrowing{TTL: time.Duration(r.IntN(90)) * time.Minute, Task: tasks[r.IntN(len(tasks))]}
			if r.IntN(2) == 0 {
				n.Holder = &rel.Object{Type: "agent", ID: fmt.Sprintf("a%d", depth)}
			}
			for range r.IntN(3) {
				n.Rights = append(n.Rights, randRight(r))
			}
			child, err := Attenuate(tok, n, now)
			if err != nil {
				if !errors.Is(err, ErrWidening) {
					t.Fatalf("seed %d depth %d: Attenuate: %v", seed, depth, err)
				}
				// The refused block, appended behind Attenuate's back, must
				// not verify either.
				forced := forceAppend(t, tok, n, now)
				if _, err := v.Verify(forced); err == nil {
					t.Fatalf("seed %d depth %d: a widening block Attenuate refused verified when appended directly: %v", seed, depth, n)
				}
				continue
			}
			for _, at := range []time.Time{start, start.Add(30 * time.Minute), start.Add(61 * time.Minute)} {
				for _, req := range requests {
					if !allows(child, req, at) {
						continue
					}
					childAllowed++
					if !allows(tok, req, at) {
						t.Fatalf("seed %d depth %d: the child allows %+v at +%v but its parent does not\nparent %+v\nchild %+v",
							seed, depth, req, at.Sub(start), tok.Blocks, child.Blocks)
					}
				}
			}
			tok = child
		}
	}
	// The property is not vacuous: children do allow things.
	if childAllowed < 50 {
		t.Fatalf("only %d allowed child requests over %d chains; the generator is too narrow", childAllowed, chains)
	}
}

// forceAppend appends the block Attenuate would have built for n, without
// its refusals.
func forceAppend(t *testing.T, tok *Token, n Narrowing, now time.Time) string {
	t.Helper()
	text, _ := tok.Encode()
	id, _ := newBlockID()
	b := Block{Version: descriptorVersion, ID: id, Parent: tok.ID(), Rights: normalizeRights(n.Rights), Task: n.Task, IssuedAt: now.UTC()}
	if n.Holder != nil {
		b.Holder = n.Holder.String()
	}
	if n.TTL > 0 {
		b.Expires = now.Add(n.TTL).UTC()
	}
	return appendRaw(t, text, b, nil)
}

func testKeys(t testing.TB) *KeySet {
	t.Helper()
	k, err := GenerateKey("k1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeySet(k)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}
