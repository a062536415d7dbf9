package capability_test

import (
	"context"
	"fmt"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store/rel"
)

// Bob lets agent:a read his calendar for an hour; agent:a hands agent:b a
// ten-minute piece of that offline.
func Example() {
	ctx := context.Background()
	schema := `
definition user {}
definition agent {
	relation acts_for: user | agent
}
definition calendar {
	relation owner: user
	permission read = owner
	permission write = owner
}`
	owner, _ := rel.Parse("calendar:bob#owner@user:bob")
	eng, err := engine.Load(ctx, schema, []rel.Relationship{owner})
	if err != nil {
		fmt.Println(err)
		return
	}

	key, _ := capability.GenerateKey("k1", time.Now())
	keys, _ := capability.NewKeySet(key)
	revocations := capability.NewRevocationSet()
	_ = revocations.Load(nil, eng.Head()) // a server feeds it with capability.Follow
	checker := &capability.Checker{Keys: keys, Verifier: capability.NewVerifier(keys, capability.VerifierOptions{}), Revocations: revocations}

	read, _ := capability.ParseRight("calendar:bob#read")
	tok, err := checker.Mint(ctx, capability.ForEngine(eng), capability.Grant{
		Holder: rel.Object{Type: "agent", ID: "a"}, OnBehalfOf: rel.Object{Type: "user", ID: "bob"},
		Rights: []capability.Right{read}, TTL: time.Hour, Task: "T",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	sub, _ := capability.Attenuate(tok, capability.Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"}, TTL: 10 * time.Minute}, time.Now())
	text, _ := sub.Encode()

	for _, c := range []struct{ perm, subject string }{{"read", "b"}, {"write", "b"}, {"read", "a"}} {
		d, _ := checker.Check(ctx, capability.ForEngine(eng), capability.CheckRequest{
			Token: text, Resource: rel.Object{Type: "calendar", ID: "bob"}, Permission: c.perm,
			Subject: rel.Object{Type: "agent", ID: c.subject}, Task: "T",
		})
		fmt.Printf("%s by agent:%s: allowed=%v reason=%q block=%d\n", c.perm, c.subject, d.Allowed, d.Reason, d.Block)
	}
	// Output:
	// read by agent:b: allowed=true reason="" block=1
	// write by agent:b: allowed=false reason="token_out_of_scope" block=0
	// read by agent:a: allowed=false reason="token_wrong_holder" block=1
}
