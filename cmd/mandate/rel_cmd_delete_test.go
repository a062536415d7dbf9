package main

import (
	"reflect"
	"strings"
	"testing"
)

func strptr(s string) *string { return &s }

func TestParseFilter(t *testing.T) {
	cases := []struct {
		text string
		want filterSpec
		err  string
	}{
		{text: "doc", want: filterSpec{resourceType: "doc"}},
		{text: "resource_type=doc,relation=viewer", want: filterSpec{resourceType: "doc", relation: "viewer"}},
		{text: " resource-type = doc , resource_id=a , resource_id=b=c ", want: filterSpec{resourceType: "doc", resourceIDs: []string{"a", "b=c"}}},
		{text: "resource_type=doc,subject_type=group,subject_id=eng,subject_relation=member",
			want: filterSpec{resourceType: "doc", subjectType: "group", subjectID: "eng", subjectRelation: strptr("member")}},
		{text: "resource_type=doc,subject_type=user,subject_relation=", want: filterSpec{resourceType: "doc", subjectType: "user", subjectRelation: strptr("")}},
		{text: "", err: "empty"},
		{text: "resource_type=doc,color=red", err: `unknown key "color"`},
		{text: "resource_type=doc,relation", err: `"relation" is not key=value`},
		{text: "resource_type=doc,relation=", err: "relation has no value"},
		{text: "resource_type=doc,resource_type=folder", err: "resource_type is given twice"},
		{text: "resource_type=doc,subject_id=alice", err: "need subject_type"},
		{text: "resource_type=doc,subject_relation=member", err: "need subject_type"},
	}
	for _, c := range cases {
		got, err := parseFilter("--filter", c.text)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "--filter") {
				t.Errorf("parseFilter(%q) = %v, want an error naming --filter and %q", c.text, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseFilter(%q) = %+v, %v; want %+v", c.text, got, err, c.want)
		}
	}
	// The proto form carries the subject relation only when asked.
	f, _ := parseFilter("f", "resource_type=doc,subject_type=user,subject_relation=")
	if p := f.proto(); p.GetOptionalSubjectFilter().GetOptionalRelation() == nil || p.GetOptionalSubjectFilter().GetOptionalRelation().GetRelation() != "" {
		t.Errorf("subject_relation= must filter for no relation: %v", p)
	}
	f, _ = parseFilter("f", "resource_type=doc,subject_type=user")
	if p := f.proto(); p.GetOptionalSubjectFilter().GetOptionalRelation() != nil {
		t.Errorf("no subject_relation must match any: %v", p)
	}
}

// TestRelDeleteByFilter deletes through DeleteRelationships with --filter
// and with the field flags, honouring --limit: over the limit nothing is
// deleted and the error says how to proceed.
func TestRelDeleteByFilter(t *testing.T) {
	startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	initial := []string{
		"doc:a#viewer@user:ann",
		"doc:b#viewer@user:ann",
		"doc:c#viewer@user:ann",
		"doc:c#viewer@user:bob",
		"doc:c#owner@user:ann",
		"doc:d#viewer@group:eng#member",
		"doc:d#viewer@user:*",
		"group:eng#member@user:ann",
	}
	mustCLI(t, append([]string{"rel", "write"}, initial...)...)
	current := func() []string { return exportAll(t) }
	without := func(have []string, gone ...string) []string {
		var out []string
		for _, h := range have {
			keep := true
			for _, g := range gone {
				keep = keep && h != g
			}
			if keep {
				out = append(out, h)
			}
		}
		return out
	}

	// Three match; a limit of two deletes nothing.
	before := current()
	_, errOut, code := cli(t, "", "rel", "delete", "--filter", "resource_type=doc,relation=viewer,subject_type=user,subject_id=ann", "--limit", "2")
	if code == 0 || !strings.Contains(errOut, "FailedPrecondition") || !strings.Contains(errOut, "nothing was deleted") || !strings.Contains(errOut, "raise --limit") {
		t.Errorf("over the limit: exit %d\n%s", code, errOut)
	}
	sameSet(t, "after a refused delete", current(), before)

	steps := []struct {
		name string
		args []string
		n    string
		gone []string
	}{
		{"filter within the limit", []string{"--filter", "resource_type=doc,relation=viewer,subject_type=user,subject_id=ann", "--limit", "3"}, "3",
			[]string{"doc:a#viewer@user:ann", "doc:b#viewer@user:ann", "doc:c#viewer@user:ann"}},
		{"flags: a userset subject only", []string{"--resource-type", "doc", "--subject-type", "group", "--subject-relation", "member"}, "1",
			[]string{"doc:d#viewer@group:eng#member"}},
		{"flags: resource IDs", []string{"--resource-type", "doc", "--resource-id", "c", "--resource-id", "zzz", "--relation", "owner"}, "1",
			[]string{"doc:c#owner@user:ann"}},
		{"filter: subjects without a relation", []string{"--filter", "resource_type=doc,subject_type=user,subject_relation="}, "2",
			[]string{"doc:c#viewer@user:bob", "doc:d#viewer@user:*"}},
		{"nothing matches", []string{"--filter", "doc"}, "0", nil},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			before := current()
			out := mustCLI(t, append([]string{"rel", "delete"}, s.args...)...)
			if !strings.HasPrefix(out, s.n+" relationship(s) deleted\nrevision: ") {
				t.Errorf("output:\n%s", out)
			}
			sameSet(t, "after the delete", current(), without(before, s.gone...))
		})
	}
	sameSet(t, "what is left", current(), []string{"group:eng#member@user:ann"})

	// Exact deletes still work.
	mustCLI(t, "rel", "delete", "group:eng#member@user:ann")
	if got := current(); len(got) != 0 {
		t.Errorf("left after deleting everything: %v", got)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"rel", "delete", "--filter", "relation=viewer"}, "needs a resource type"},
		{[]string{"rel", "delete", "--relation", "viewer"}, "needs a resource type"},
		{[]string{"rel", "delete", "--filter", "doc", "--resource-type", "doc"}, "exclusive"},
		{[]string{"rel", "delete", "doc:a#viewer@user:ann", "--filter", "doc"}, "not both"},
		{[]string{"rel", "delete", "doc:a#viewer@user:ann", "--limit", "3"}, "--limit applies to deleting by filter"},
		{[]string{"rel", "delete", "--resource-type", "doc", "--subject-id", "ann"}, "need subject_type"},
		{[]string{"rel", "delete", "--filter", "resource_type=doc,size=3"}, `unknown key "size"`},
		{[]string{"rel", "delete", "--resource-type", "Doc"}, "rel delete: InvalidArgument: filter.resource_type"},
		{[]string{"rel", "delete", "--resource-type", "doc", "--limit", "5000"}, "optional_limit: 5000 is over the server's maximum"},
	} {
		_, errOut, code := cli(t, "", c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", c.args, code, errOut, c.want)
		}
	}
}
