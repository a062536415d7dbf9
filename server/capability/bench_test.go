package capability

import (
	"context"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

func benchToken(b *testing.B, keys *KeySet, blocks int) string {
	b.Helper()
	tok, err := Mint(keys, bobRead, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i < blocks; i++ {
		if tok, err = Attenuate(tok, Narrowing{TTL: time.Hour}, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	text, err := tok.Encode()
	if err != nil {
		b.Fatal(err)
	}
	return text
}

func BenchmarkVerify(b *testing.B) {
	keys := testKeys(b)
	for _, blocks := range []int{1, 3} {
		text := benchToken(b, keys, blocks)
		b.Run("uncached/blocks="+string(rune('0'+blocks)), func(b *testing.B) {
			v := NewVerifier(keys, VerifierOptions{})
			for b.Loop() {
				if _, err := v.verify(text); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("cached/blocks="+string(rune('0'+blocks)), func(b *testing.B) {
			v := NewVerifier(keys, VerifierOptions{})
			for b.Loop() {
				if _, err := v.Verify(text); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkMint(b *testing.B) {
	keys := testKeys(b)
	for b.Loop() {
		if _, err := Mint(keys, bobRead, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAttenuate(b *testing.B) {
	keys := testKeys(b)
	tok, err := Mint(keys, bobRead, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	holder := rel.Object{Type: "agent", ID: "b"}
	for b.Loop() {
		if _, err := Attenuate(tok, Narrowing{Holder: &holder, TTL: 10 * time.Minute}, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckWithToken compares a check made with a cached token with
// the same check through a stored one-link delegation (agent:a acts for
// user:bob and is granted reader itself), in process.
func BenchmarkCheckWithToken(b *testing.B) {
	ctx := context.Background()
	rels := []rel.Relationship{}
	for _, s := range []string{"calendar:bob#owner@user:bob", "calendar:bob#reader@agent:d", "agent:d#acts_for@user:bob"} {
		r, err := rel.Parse(s)
		if err != nil {
			b.Fatal(err)
		}
		rels = append(rels, r)
	}
	eng, err := engine.Load(ctx, testSchema, rels)
	if err != nil {
		b.Fatal(err)
	}
	keys := testKeys(b)
	revs := NewRevocationSet()
	if err := revs.Load(nil, eng.Head()); err != nil {
		b.Fatal(err)
	}
	c := &Checker{Keys: keys, Verifier: NewVerifier(keys, VerifierOptions{}), Revocations: revs}
	text := benchToken(b, keys, 1)
	adapter := ForEngine(eng)
	req := CheckRequest{Token: text, Resource: rel.Object{Type: "calendar", ID: "bob"}, Permission: "read", Subject: rel.Object{Type: "agent", ID: "a"}}
	b.Run("token", func(b *testing.B) {
		for b.Loop() {
			d, err := c.Check(ctx, adapter, req)
			if err != nil || !d.Allowed {
				b.Fatalf("%+v, %v", d, err)
			}
		}
	})
	b.Run("stored-delegation", func(b *testing.B) {
		q := engine.CheckRequest{Resource: req.Resource, Permission: "read", Subject: rel.Subject{Type: "agent", ID: "d"}}
		for b.Loop() {
			res, err := eng.Check(ctx, q)
			if err != nil || res.Decision != engine.Allowed {
				b.Fatalf("%+v, %v", res, err)
			}
		}
	})
	b.Run("stored-delegation-explained", func(b *testing.B) {
		q := engine.CheckRequest{Resource: req.Resource, Permission: "read", Subject: rel.Subject{Type: "agent", ID: "d"}, Explain: true}
		for b.Loop() {
			res, err := eng.Check(ctx, q)
			if err != nil || res.Decision != engine.Allowed {
				b.Fatalf("%+v, %v", res, err)
			}
		}
	})
}
