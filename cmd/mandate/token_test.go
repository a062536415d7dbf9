package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store/rel"
)

func mintForCLI(t *testing.T) (*capability.KeySet, string) {
	t.Helper()
	key, err := capability.GenerateKey("k1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := capability.Mint(keys, capability.Grant{
		Holder: rel.Object{Type: "agent", ID: "a"}, OnBehalfOf: rel.Object{Type: "user", ID: "bob"},
		Rights: []capability.Right{{Type: "calendar", ID: "bob", Permissions: []string{"read", "write"}}}, TTL: time.Hour,
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	text, err := tok.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return keys, text
}

func runTokenCLI(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	code := 0
	if err := root.ExecuteContext(t.Context()); err != nil {
		errOut.WriteString(err.Error())
		code = 1
	}
	return out.String(), errOut.String(), code
}

// mandate token attenuate prints a narrower token that verifies against
// the minting key and allows only what it kept, with no server anywhere.
func TestTokenAttenuateCommand(t *testing.T) {
	keys, parent := mintForCLI(t)
	out, errOut, code := runTokenCLI(t, "", "token", "attenuate", parent, "--holder", "agent:b", "--allow", "calendar:bob#read", "--ttl", "10m")
	if code != 0 {
		t.Fatalf("attenuate: exit %d, %s", code, errOut)
	}
	child := strings.TrimSpace(out)
	v := capability.NewVerifier(keys, capability.VerifierOptions{})
	vt, err := v.Verify(child)
	if err != nil {
		t.Fatalf("the printed token does not verify: %v", err)
	}
	if vt.Holder() != "agent:b" || len(vt.Blocks) != 2 || time.Until(vt.Expires()) > 10*time.Minute {
		t.Fatalf("attenuated token: holder %s, %d blocks, expires %v", vt.Holder(), len(vt.Blocks), vt.Expires())
	}
	req := capability.Request{Resource: rel.Object{Type: "calendar", ID: "bob"}, Permission: "read", Holder: rel.Object{Type: "agent", ID: "b"}}
	if _, err := v.Allow(vt, req); err != nil {
		t.Fatalf("read with the attenuated token: %v", err)
	}
	req.Permission = "write"
	if _, err := v.Allow(vt, req); err == nil {
		t.Fatal("write allowed by a token attenuated to read")
	}

	// From stdin, attenuated again.
	if out, errOut, code = runTokenCLI(t, child+"\n", "token", "attenuate", "-", "--task", "T"); code != 0 || strings.TrimSpace(out) == child {
		t.Fatalf("attenuate from stdin: exit %d, %q, %s", code, out, errOut)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "attenuate", parent, "--allow", "calendar:alice#read"}, "widens"},
		{[]string{"token", "attenuate", child, "--allow", "calendar:bob#write"}, "widens"},
		{[]string{"token", "attenuate", parent, "--allow", "calendar"}, "expected type:id#permission"},
		{[]string{"token", "attenuate", parent, "--holder", "agent"}, "expected type:id"},
		{[]string{"token", "attenuate", parent, "--ttl", "-5m"}, "expected a positive duration"},
		{[]string{"token", "attenuate", "not-a-token"}, "token_malformed"},
		{[]string{"token", "attenuate"}, "accepts 1 arg"},
	} {
		if out, errOut, code := runTokenCLI(t, "", tc.args...); code == 0 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want a failure mentioning %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

func TestTokenInspectCommand(t *testing.T) {
	_, parent := mintForCLI(t)
	out, errOut, code := runTokenCLI(t, "", "token", "attenuate", parent, "--holder", "agent:b", "--task", "T")
	if code != 0 {
		t.Fatal(errOut)
	}
	out, errOut, code = runTokenCLI(t, "", "token", "inspect", strings.TrimSpace(out))
	if code != 0 {
		t.Fatalf("inspect: exit %d, %s", code, errOut)
	}
	var got struct {
		ID        string           `json:"id"`
		Holder    string           `json:"holder"`
		Principal string           `json:"on_behalf_of"`
		Verified  bool             `json:"verified"`
		Blocks    []map[string]any `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("inspect output is not JSON: %v\n%s", err, out)
	}
	if got.Holder != "agent:b" || got.Principal != "user:bob" || got.Verified || len(got.Blocks) != 2 ||
		got.Blocks[1]["parent"] != got.Blocks[0]["id"] || got.Blocks[1]["task"] != "T" || got.ID != got.Blocks[1]["id"] {
		t.Fatalf("inspect output:\n%s", out)
	}
	if _, errOut, code := runTokenCLI(t, "", "token", "inspect", parent[:len(parent)/2]); code == 0 || !strings.Contains(errOut, "token_malformed") {
		t.Fatalf("inspect of a truncated token: exit %d, %s", code, errOut)
	}
}
