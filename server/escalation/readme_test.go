package escalation

import (
	"os"
	"strings"
	"testing"
)

// readmeSection returns the README's "## Escalation rules" section.
func readmeSection(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n## Escalation rules\n")
	if i < 0 {
		t.Fatal("README.md has no Escalation rules section")
	}
	s = s[i+1:]
	if j := strings.Index(s[3:], "\n## "); j >= 0 {
		s = s[:j+3]
	}
	return s
}

// indentedBlocks returns the section's code blocks (lines indented by four
// spaces), de-indented.
func indentedBlocks(s string) []string {
	var blocks []string
	var cur []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "    ") {
			cur = append(cur, line[4:])
			continue
		}
		if len(cur) > 0 && line == "" {
			cur = append(cur, "")
			continue
		}
		if len(cur) > 0 {
			blocks = append(blocks, strings.TrimRight(strings.Join(cur, "\n"), "\n")+"\n")
			cur = nil
		}
	}
	return blocks
}

// TestREADME: the README's example rule file parses and behaves as it
// says, and the errors it shows are the errors these files give.
func TestREADME(t *testing.T) {
	blocks := indentedBlocks(readmeSection(t))
	if len(blocks) < 2 {
		t.Fatalf("%d code blocks in the section", len(blocks))
	}
	rs, err := Parse("rules.yaml", []byte(blocks[0]))
	if err != nil {
		t.Fatalf("the README's rule file: %v\n%s", err, blocks[0])
	}
	if got := strings.Join(rs.Names(), ","); got != "large-payment,first-use-of-resource-type" {
		t.Fatalf("rules %s", got)
	}
	e := New(rs, testOpts)
	pay := check("payment:p1", "pay")
	if got := escalated(t, e, pay); got != "large-payment" {
		t.Fatalf("a payment without an amount: %q", got)
	}
	pay.Context = map[string]any{"amount": 20.0}
	if got := escalated(t, e, pay); got != "first-use-of-resource-type" {
		t.Fatalf("a small first payment: %q", got)
	}
	e.Observe(pay, true)
	if got := escalated(t, e, pay); got != "" {
		t.Fatalf("a small second payment: %q", got)
	}

	errs := blocks[1]
	for _, file := range []string{
		"rules:\n  - name: a\n    condition: signals.checks_last_minut > 3\n",
		"rules:\n  - name: a\n    match:\n      resource_type: [x]\n",
		"rules:\n  - name: burst\n    match:\n      permissions: [view]\n  - name: b\n    description: x\n    match:\n      agent_types: [agent]\n    max_duration: 15 minutes\n",
		"rules:\n  - name: burst\n  - name: b\n  - name: c\n  - name: d\n  - name: e\n  - name: f\n  - name: g\n  - name: h\n  - name: i\n  - name: j\n  - name: burst\n",
	} {
		_, err := Parse("rules.yaml", []byte(file))
		if err == nil {
			t.Fatalf("no error for\n%s", file)
		}
		msg, _, _ := strings.Cut(err.Error(), ", ...")
		if len(msg) > 100 {
			msg = msg[:100]
		}
		if !strings.Contains(errs, msg) {
			t.Errorf("the README does not show the error %q", msg)
		}
	}
}
