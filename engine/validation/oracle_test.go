package validation

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authzed/spicedb/pkg/development"
	core "github.com/authzed/spicedb/pkg/proto/core/v1"
	devinterface "github.com/authzed/spicedb/pkg/proto/developer/v1"
	"github.com/authzed/spicedb/pkg/tuple"
	"github.com/authzed/spicedb/pkg/validationfile/blocks"

	"github.com/mandate-authz/mandate/engine"
)

// zedValidation asks SpiceDB's development package (what `zed validate`
// runs) for the validation block it would generate for every relation and
// permission of every resource in doc, and returns it parsed.
func zedValidation(t *testing.T, ctx context.Context, doc *Document) []ExpectedRelation {
	t.Helper()
	tuples := make([]*core.RelationTuple, 0, len(doc.Relationships))
	for _, r := range doc.Relationships {
		parsed, err := tuple.Parse(r.String())
		if err != nil {
			t.Fatalf("relationship %s: %v", r, err)
		}
		tuples = append(tuples, parsed.ToCoreTuple())
	}
	dc, devErrs, err := development.NewDevContext(ctx, &devinterface.RequestContext{Schema: doc.Schema, Relationships: tuples})
	if err != nil {
		t.Fatalf("spicedb development context: %v", err)
	}
	if devErrs != nil {
		t.Fatalf("spicedb rejected the document: %v", devErrs.InputErrors)
	}
	defer dc.Dispose()

	keys := blocks.ValidationMap{}
	seen := map[string]bool{}
	for _, r := range doc.Relationships {
		if seen[r.Resource.String()] {
			continue
		}
		seen[r.Resource.String()] = true
		for _, rr := range dc.CompiledSchema.ObjectDefinitions {
			if rr.Name != r.Resource.Type {
				continue
			}
			for _, relation := range rr.Relation {
				onr := tuple.ObjectAndRelation{ObjectType: r.Resource.Type, ObjectID: r.Resource.ID, Relation: relation.Name}
				keys[blocks.ObjectRelation{ObjectRelationString: tuple.StringONR(onr), ObjectAndRelation: onr}] = nil
			}
		}
	}
	// The expected subjects are empty, so RunValidation reports every
	// subject as unlisted; only the membership it computed matters here.
	membership, _, err := development.RunValidation(dc, &blocks.ParsedExpectedRelations{ValidationMap: keys})
	if err != nil {
		t.Fatalf("spicedb validation: %v", err)
	}
	generated, err := development.GenerateValidation(membership)
	if err != nil {
		t.Fatalf("spicedb generate validation: %v", err)
	}
	parsed, err := blocks.ParseExpectedRelationsBlock([]byte(generated))
	if err != nil {
		t.Fatalf("parsing spicedb's generated block: %v\n%s", err, generated)
	}
	out := &Document{}
	p := &parser{name: "generated"}
	if err := p.expected(0, &document{ExpectedRelations: *parsed}, out); err != nil {
		t.Fatal(err)
	}
	return out.Expected
}

// TestSpiceDBSuiteExpandMatchesZed gives every suite file the validation
// block `zed validate` generates for it (every relation and permission of
// every resource) and checks the engine's expansion against it: the suite's
// own validation blocks are empty, so this is what exercises Expand and the
// validation-block comparison over the whole suite.
func TestSpiceDBSuiteExpandMatchesZed(t *testing.T) {
	ctx := context.Background()
	keys := 0
	for _, path := range yamlFiles(t, spicedbSuiteDir(t)) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f, err := ParseFile(ctx, path)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			doc := f.Documents[0]
			expected := zedValidation(t, ctx, doc)
			keys += len(expected)
			eng, err := engine.Load(ctx, doc.Schema, doc.Relationships)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			r := RunDocument(ctx, eng, &Document{Expected: expected}, Options{})
			for i, fl := range r.Failures {
				if i == maxReported {
					t.Errorf("... and %d more failures", len(r.Failures)-maxReported)
					break
				}
				fl.Line = 0 // a line of the generated block, not of the file
				t.Error(strings.TrimPrefix(fl.String(), ": "))
			}
		})
	}
	t.Logf("compared %d expanded relations and permissions with zed's", keys)
}
