package validation

import (
	"sort"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

// leaf builds a leaf expanding onr (type:id#relation) with subjects written
// as user:ann, user:ann[c] (caveated) or group:eng#member.
func leaf(t *testing.T, onr string, subjects ...string) *engine.ExpandNode {
	t.Helper()
	obj, relation, err := rel.ParseObjectRelation(onr)
	if err != nil {
		t.Fatal(err)
	}
	n := &engine.ExpandNode{Object: obj, Relation: relation, Op: "leaf"}
	for _, s := range subjects {
		var caveat *rel.Caveat
		if name, ok := strings.CutSuffix(s, "[c]"); ok {
			s, caveat = name, &rel.Caveat{Name: "c"}
		}
		sub, err := rel.ParseSubject(s)
		if err != nil {
			t.Fatal(err)
		}
		n.Subjects = append(n.Subjects, rel.Relationship{Resource: obj, Relation: relation, Subject: sub, Caveat: caveat})
	}
	return n
}

func op(name string, obj rel.Object, relation string, children ...*engine.ExpandNode) *engine.ExpandNode {
	return &engine.ExpandNode{Object: obj, Relation: relation, Op: name, Children: children}
}

var doc1 = rel.Object{Type: "doc", ID: "1"}

// render lists what a tree reaches as validation entries, sorted.
func render(t *testing.T, n *engine.ExpandNode) []string {
	t.Helper()
	set, err := foundSubjects(n, "doc:1#view")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range set.list() {
		out = append(out, "["+f.String()+"] is "+wrapONRs(f.resourceList()))
	}
	sort.Strings(out)
	return out
}

func TestFoundSubjects(t *testing.T) {
	tests := []struct {
		name string
		tree func(t *testing.T) *engine.ExpandNode
		want []string
	}{
		{
			name: "union of direct and userset subjects",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("union", doc1, "viewer",
					leaf(t, "doc:1#viewer", "group:eng#member", "user:carl"),
					leaf(t, "group:eng#member", "user:ann", "user:carl"))
			},
			want: []string{
				"[group:eng#member] is <doc:1#viewer>",
				"[user:ann] is <group:eng#member>",
				"[user:carl] is <doc:1#viewer>/<group:eng#member>",
			},
		},
		{
			name: "wildcard minus a subject excludes it",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("exclusion", doc1, "view", leaf(t, "doc:1#viewer", "user:*"), leaf(t, "doc:1#banned", "user:bob"))
			},
			want: []string{"[user:* - {user:bob}] is <doc:1#viewer>"},
		},
		{
			name: "conditional removal leaves a conditional subject found on both sides",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("exclusion", doc1, "view", leaf(t, "doc:1#viewer", "user:ann", "user:bob"), leaf(t, "doc:1#banned", "user:ann[c]", "user:bob"))
			},
			want: []string{"[user:ann[...]] is <doc:1#banned>/<doc:1#viewer>"},
		},
		{
			name: "wildcard minus a wildcard with exclusions leaves the excluded",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("exclusion", doc1, "view",
					leaf(t, "doc:1#viewer", "user:*"),
					op("exclusion", doc1, "", leaf(t, "doc:1#banned", "user:*"), leaf(t, "doc:1#pardoned", "user:tom")))
			},
			want: []string{"[user:tom] is <doc:1#pardoned>"},
		},
		{
			name: "intersection with a wildcard keeps the other side's subjects",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("intersection", doc1, "view", leaf(t, "doc:1#a", "user:*", "user:ann"), leaf(t, "doc:1#b", "user:bob", "user:ann[c]"))
			},
			want: []string{
				"[user:ann[...]] is <doc:1#a>/<doc:1#b>",
				"[user:bob] is <doc:1#b>",
			},
		},
		{
			name: "union of wildcards keeps only common exclusions",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("union", doc1, "view",
					op("exclusion", doc1, "", leaf(t, "doc:1#a", "user:*"), leaf(t, "doc:1#x", "user:tom", "user:sarah")),
					op("exclusion", doc1, "", leaf(t, "doc:1#b", "user:*"), leaf(t, "doc:1#y", "user:sarah")))
			},
			want: []string{"[user:* - {user:sarah}] is <doc:1#a>/<doc:1#b>"},
		},
		{
			name: "conditional exclusion from a wildcard",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("exclusion", doc1, "view", leaf(t, "doc:1#viewer", "user:*"), leaf(t, "doc:1#banned", "user:eve[c]"))
			},
			want: []string{"[user:* - {user:eve[...]}] is <doc:1#viewer>"},
		},
		{
			name: "a caveated userset conditions what it reaches",
			tree: func(t *testing.T) *engine.ExpandNode {
				return op("union", doc1, "viewer",
					leaf(t, "doc:1#viewer", "group:eng#member[c]", "user:carl"),
					leaf(t, "group:eng#member", "user:ann"))
			},
			want: []string{
				"[group:eng#member[...]] is <doc:1#viewer>",
				"[user:ann[...]] is <group:eng#member>",
				"[user:carl] is <doc:1#viewer>",
			},
		},
		{
			name: "an arrow through a caveated relationship conditions what it reaches",
			tree: func(t *testing.T) *engine.ExpandNode {
				plain := leaf(t, "folder:a#viewer", "user:ann")
				plain.Via = &rel.Relationship{Resource: doc1, Relation: "parent", Subject: rel.Subject{Type: "folder", ID: "a"}}
				caveated := leaf(t, "folder:b#viewer", "user:bob")
				caveated.Via = &rel.Relationship{Resource: doc1, Relation: "parent", Subject: rel.Subject{Type: "folder", ID: "b"}, Caveat: &rel.Caveat{Name: "c"}}
				return op("union", doc1, "parent->viewer", plain, caveated)
			},
			want: []string{"[user:ann] is <folder:a#viewer>", "[user:bob[...]] is <folder:b#viewer>"},
		},
		{
			name: "a leaf without a relation is found on the enclosing relation",
			tree: func(t *testing.T) *engine.ExpandNode {
				self := &engine.ExpandNode{Object: doc1, Op: "leaf", Subjects: []rel.Relationship{{Resource: doc1, Relation: "self", Subject: rel.Subject{Type: "doc", ID: "1"}}}}
				return op("union", doc1, "view", self, leaf(t, "doc:1#viewer", "user:ann"))
			},
			want: []string{"[doc:1] is <doc:1#view>", "[user:ann] is <doc:1#viewer>"},
		},
		{
			name: "empty intersection",
			tree: func(t *testing.T) *engine.ExpandNode { return op("intersection", doc1, "view") },
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := render(t, tt.tree(t))
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

func TestFoundSubjectsRejectsMalformedTrees(t *testing.T) {
	for _, n := range []*engine.ExpandNode{nil, op("exclusion", doc1, "view"), op("xor", doc1, "view")} {
		if _, err := foundSubjects(n, "doc:1#view"); err == nil {
			t.Errorf("accepted %+v", n)
		}
	}
}
