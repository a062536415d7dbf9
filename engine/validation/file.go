// Package validation runs SpiceDB validation files against the Mandate
// engine: every assertion (assertTrue, assertFalse, assertCaveated), the
// expected-relations block (as `zed validate` does), and a consistency check
// that Check, LookupResources and LookupSubjects agree with each other over
// everything the file mentions.
//
// The file format is SpiceDB's: its own block parsers
// (github.com/authzed/spicedb/pkg/validationfile/blocks) decode each block and
// give source positions, so exactly the files SpiceDB accepts are accepted. A
// file may hold several YAML documents separated by `---`, each an independent
// schema, relationships and assertions.
package validation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/authzed/spicedb/pkg/spiceerrors"
	"github.com/authzed/spicedb/pkg/tuple"
	"github.com/authzed/spicedb/pkg/validationfile/blocks"
	yaml "go.yaml.in/yaml/v3"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store/rel"
)

// File is a parsed validation file.
type File struct {
	// Name is the path the file was read from (or the name given to Parse).
	Name string
	// Documents are the file's YAML documents, in order.
	Documents []*Document
}

// Document is one schema with its relationships, assertions and expected
// relations.
type Document struct {
	// Index is the document's 0-based position in its file.
	Index int
	// Line is the file line the document starts on.
	Line int
	// Schema is the schema text.
	Schema string
	// Relationships are the document's relationships, in file order, with
	// the file line of each in RelationshipLines.
	Relationships     []rel.Relationship
	RelationshipLines []int
	// Assertions in file order within each kind: assertTrue, assertCaveated,
	// assertFalse.
	Assertions []Assertion
	// Expected is the validation block, in file order.
	Expected []ExpectedRelation
}

// Assertion is one entry of an assertions block.
type Assertion struct {
	// Kind is the block the assertion is in: assertTrue, assertFalse or
	// assertCaveated.
	Kind string
	// Want is the decision the assertion requires.
	Want engine.Decision
	// Text is the assertion as written, including any ` with {...}` part.
	Text       string
	Resource   rel.Object
	Permission string
	Subject    rel.Subject
	// Context is the caveat context from the ` with {...}` part, or nil.
	Context map[string]any
	Line    int
}

// Assertion kinds, as named in the file.
const (
	AssertTrue     = "assertTrue"
	AssertFalse    = "assertFalse"
	AssertCaveated = "assertCaveated"
)

// ExpectedRelation is one key of the validation block with the subjects it
// must expand to.
type ExpectedRelation struct {
	// Key is the key as written, e.g. document:1#view.
	Key      string
	Object   rel.Object
	Relation string
	Line     int
	Subjects []ExpectedSubject
}

// ExpectedSubject is one `[subject] is <object#relation>/...` entry.
type ExpectedSubject struct {
	// Text is the entry as written.
	Text string
	// Subject is nil when the entry names no subject (a failure at run time,
	// as in zed).
	Subject *rel.Subject
	// Caveated is set by a `[...]` marker after the subject.
	Caveated bool
	// Exclusions lists a wildcard's `- {user:a, user:b[...]}` exceptions.
	Exclusions []ExpectedExclusion
	// Resources are the <object#relation> the subject must be found on, as
	// written (type:id#relation).
	Resources []string
	Line      int
}

// ExpectedExclusion is a subject excluded from an expected wildcard.
type ExpectedExclusion struct {
	Subject  rel.Subject
	Caveated bool
}

// String renders the exclusion as in the file: user:a or user:a[...].
func (x ExpectedExclusion) String() string {
	if x.Caveated {
		return x.Subject.String() + "[...]"
	}
	return x.Subject.String()
}

// ParseError reports a malformed validation file with the position of the
// problem.
type ParseError struct {
	File string
	// Document is the 0-based document index, -1 when not known.
	Document int
	// Line is the 1-based file line, 0 when not known.
	Line int
	Err  error
}

func (e *ParseError) Error() string {
	pos := e.File
	if e.Line > 0 {
		pos = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Document > 0 {
		pos += fmt.Sprintf(" (document %d)", e.Document+1)
	}
	return pos + ": " + e.Err.Error()
}

func (e *ParseError) Unwrap() error { return e.Err }

// document mirrors SpiceDB's validation file layout; each block decodes
// itself with SpiceDB's parser and records its position.
type document struct {
	Schema            blocks.SchemaWithPosition      `yaml:"schema"`
	SchemaFile        string                         `yaml:"schemaFile"`
	Relationships     blocks.ParsedRelationships     `yaml:"relationships"`
	Assertions        blocks.Assertions              `yaml:"assertions"`
	ExpectedRelations blocks.ParsedExpectedRelations `yaml:"validation"`
}

var (
	topLevelKeys  = []string{"schema", "schemaFile", "relationships", "assertions", "validation"}
	assertionKeys = []string{AssertTrue, AssertFalse, AssertCaveated}
)

// ParseFile reads and parses the validation file at path.
func ParseFile(ctx context.Context, path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading validation file: %w", err)
	}
	return Parse(ctx, path, data)
}

// Parse parses validation file contents; name is used in errors and to
// resolve a relative schemaFile. Beyond the syntax, it compiles each schema
// and checks each relationship against it, so that a file that parses can be
// loaded.
func Parse(ctx context.Context, name string, data []byte) (*File, error) {
	p := &parser{name: name, lines: strings.Split(string(data), "\n")}
	f := &File{Name: name}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		// Documents are numbered as kept: empty ones do not count.
		index := len(f.Documents)
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, p.errorf(index, 0, err)
		}
		if isEmptyDocument(&node) {
			continue
		}
		doc, err := p.document(ctx, index, &node)
		if err != nil {
			return nil, err
		}
		f.Documents = append(f.Documents, doc)
	}
	if len(f.Documents) == 0 {
		return nil, &ParseError{File: name, Document: -1, Err: errors.New("no document found: expected schema, relationships and assertions")}
	}
	return f, nil
}

// isEmptyDocument reports whether a YAML document holds nothing, as after a
// trailing `---`.
func isEmptyDocument(n *yaml.Node) bool {
	if n.Kind == 0 {
		return true
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		c := n.Content[0]
		return c.Kind == yaml.ScalarNode && c.Tag == "!!null"
	}
	return n.Kind == yaml.DocumentNode && len(n.Content) == 0
}

type parser struct {
	name  string
	lines []string
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+):`)

// errorf wraps err as a ParseError at line, or when that is 0 at the line
// SpiceDB's source errors or the YAML parser's message give.
func (p *parser) errorf(index, line int, err error) error {
	var se *spiceerrors.WithSourceError
	if line == 0 && errors.As(err, &se) && se.LineNumber > 0 {
		line = int(se.LineNumber)
	}
	if m := yamlLine.FindStringSubmatch(err.Error()); line == 0 && m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	return &ParseError{File: p.name, Document: index, Line: line, Err: err}
}

func (p *parser) document(ctx context.Context, index int, node *yaml.Node) (*Document, error) {
	root := node
	if root.Kind == yaml.DocumentNode {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return nil, p.errorf(index, root.Line, errors.New("expected a mapping with schema, relationships, assertions and validation"))
	}
	if err := p.checkKeys(index, root); err != nil {
		return nil, err
	}

	var raw document
	if err := node.Decode(&raw); err != nil {
		var se *spiceerrors.WithSourceError
		line := 0
		if errors.As(err, &se) {
			// SpiceDB's positions within a block scalar are approximate;
			// find the offending text itself (its second occurrence when
			// the complaint is that it repeats).
			from := root.Line
			if strings.Contains(err.Error(), "repeated relationship") {
				from = p.locate(se.SourceCodeString, from, 0) + 1
			}
			line = p.locate(se.SourceCodeString, from, int(se.LineNumber))
		}
		return nil, p.errorf(index, line, err)
	}

	doc := &Document{Index: index, Line: root.Line, Schema: raw.Schema.Schema}
	schemaLine := blockStart(root, "schema")
	if raw.SchemaFile != "" {
		if doc.Schema != "" {
			return nil, p.errorf(index, valueLine(root, "schemaFile"), errors.New("both schema and schemaFile are given; use one"))
		}
		path := raw.SchemaFile
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(p.name), path)
		}
		text, err := os.ReadFile(path)
		if err != nil {
			return nil, p.errorf(index, valueLine(root, "schemaFile"), fmt.Errorf("schemaFile: %w", err))
		}
		doc.Schema = string(text)
		schemaLine = 0
	}
	sch, err := schema.Compile(ctx, doc.Schema)
	if err != nil {
		line := 0
		var se *schema.Error
		if errors.As(err, &se) && se.Line > 0 && schemaLine > 0 {
			line = schemaLine + se.Line - 1
		}
		return nil, p.errorf(index, line, fmt.Errorf("schema: %w", err))
	}

	if err := p.relationships(index, root, &raw, sch, doc); err != nil {
		return nil, err
	}
	if err := p.assertions(index, &raw, doc); err != nil {
		return nil, err
	}
	if err := p.expected(index, &raw, doc); err != nil {
		return nil, err
	}
	return doc, nil
}

// checkKeys rejects unknown keys, which YAML decoding would silently ignore:
// a misspelt `assertTrue` must not pass as "no assertions".
func (p *parser) checkKeys(index int, root *yaml.Node) error {
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if !slices.Contains(topLevelKeys, k.Value) {
			return p.errorf(index, k.Line, fmt.Errorf("unknown key %q (expected one of %s)", k.Value, strings.Join(topLevelKeys, ", ")))
		}
		if k.Value != "assertions" || v.Kind != yaml.MappingNode {
			continue
		}
		for j := 0; j+1 < len(v.Content); j += 2 {
			ak := v.Content[j]
			if !slices.Contains(assertionKeys, ak.Value) {
				return p.errorf(index, ak.Line, fmt.Errorf("unknown assertion kind %q (expected one of %s)", ak.Value, strings.Join(assertionKeys, ", ")))
			}
		}
	}
	return nil
}

func (p *parser) relationships(index int, root *yaml.Node, raw *document, sch *schema.Schema, doc *Document) error {
	// Parse the same lines SpiceDB's block parser accepted, in the same
	// order, with Mandate's own relationship parser.
	from := valueLine(root, "relationships")
	seen := make(map[rel.Key]int)
	for _, line := range strings.Split(raw.Relationships.RelationshipsString, "\n") {
		text := strings.TrimSpace(line)
		if text == "" || strings.HasPrefix(text, "//") {
			continue
		}
		at := p.locate(text, from, 0)
		if at > 0 {
			from = at + 1
		}
		r, err := rel.Parse(text)
		if err != nil {
			return p.errorf(index, at, err)
		}
		if err := sch.ValidateRelationship(r); err != nil {
			return p.errorf(index, at, fmt.Errorf("relationship %s: %w", text, err))
		}
		if first, ok := seen[r.Key()]; ok {
			return p.errorf(index, at, fmt.Errorf("relationship %s: repeats the relationship on line %d", text, first))
		}
		seen[r.Key()] = at
		doc.Relationships = append(doc.Relationships, r)
		doc.RelationshipLines = append(doc.RelationshipLines, at)
	}
	return nil
}

func (p *parser) assertions(index int, raw *document, doc *Document) error {
	kinds := []struct {
		kind string
		want engine.Decision
		list []blocks.Assertion
	}{
		{AssertTrue, engine.Allowed, raw.Assertions.AssertTrue},
		{AssertCaveated, engine.Conditional, raw.Assertions.AssertCaveated},
		{AssertFalse, engine.Denied, raw.Assertions.AssertFalse},
	}
	for _, k := range kinds {
		for _, a := range k.list {
			line := a.SourcePosition.LineNumber
			r := a.Relationship
			if r.OptionalCaveat != nil || r.OptionalExpiration != nil {
				return p.errorf(index, line, fmt.Errorf("assertion %q: an assertion may not carry a caveat or expiration; give caveat context with ` with {...}`", a.RelationshipWithContextString))
			}
			subject := rel.Subject{Type: r.Subject.ObjectType, ID: r.Subject.ObjectID}
			if r.Subject.Relation != tuple.Ellipsis {
				subject.Relation = r.Subject.Relation
			}
			doc.Assertions = append(doc.Assertions, Assertion{
				Kind:       k.kind,
				Want:       k.want,
				Text:       strings.TrimSpace(a.RelationshipWithContextString),
				Resource:   rel.Object{Type: r.Resource.ObjectType, ID: r.Resource.ObjectID},
				Permission: r.Resource.Relation,
				Subject:    subject,
				Context:    a.CaveatContext,
				Line:       line,
			})
		}
	}
	return nil
}

func (p *parser) expected(index int, raw *document, doc *Document) error {
	for key, subjects := range raw.ExpectedRelations.ValidationMap {
		onr := key.ObjectAndRelation
		er := ExpectedRelation{
			Key:      key.ObjectRelationString,
			Object:   rel.Object{Type: onr.ObjectType, ID: onr.ObjectID},
			Relation: onr.Relation,
			Line:     key.SourcePosition.LineNumber,
		}
		for _, s := range subjects {
			es := ExpectedSubject{Text: string(s.ValidationString), Line: s.SourcePosition.LineNumber}
			if sw := s.SubjectWithExceptions; sw != nil {
				sub := subjectFromONR(sw.Subject.Subject)
				es.Subject = &sub
				es.Caveated = sw.Subject.IsCaveated
				for _, x := range sw.Exceptions {
					es.Exclusions = append(es.Exclusions, ExpectedExclusion{Subject: subjectFromONR(x.Subject), Caveated: x.IsCaveated})
				}
			}
			for _, r := range s.Resources {
				es.Resources = append(es.Resources, onrString(r.ObjectType, r.ObjectID, r.Relation))
			}
			er.Subjects = append(er.Subjects, es)
		}
		doc.Expected = append(doc.Expected, er)
	}
	sort.Slice(doc.Expected, func(i, j int) bool {
		a, b := doc.Expected[i], doc.Expected[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Key < b.Key
	})
	return nil
}

func subjectFromONR(o tuple.ObjectAndRelation) rel.Subject {
	s := rel.Subject{Type: o.ObjectType, ID: o.ObjectID}
	if o.Relation != tuple.Ellipsis {
		s.Relation = o.Relation
	}
	return s
}

// onrString renders object#relation, or just the object for the ellipsis.
func onrString(typ, id, relation string) string {
	if relation == "" || relation == tuple.Ellipsis {
		return typ + ":" + id
	}
	return typ + ":" + id + "#" + relation
}

// locate returns the first file line at or after from (1-based) that is s,
// else the first that contains s, else fallback.
func (p *parser) locate(s string, from, fallback int) int {
	s = strings.TrimSpace(s)
	if s == "" {
		return fallback
	}
	if from < 1 {
		from = 1
	}
	for i := from - 1; i < len(p.lines); i++ {
		if strings.TrimSpace(p.lines[i]) == s {
			return i + 1
		}
	}
	for i := from - 1; i < len(p.lines); i++ {
		if strings.Contains(p.lines[i], s) {
			return i + 1
		}
	}
	return fallback
}

// valueLine returns the line of the value of key in a mapping node, 0 when
// absent.
func valueLine(m *yaml.Node, key string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1].Line
		}
	}
	return 0
}

// blockStart returns the file line where the text of key's scalar value
// begins: the line after the indicator for a block scalar (| or >).
func blockStart(m *yaml.Node, key string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key {
			continue
		}
		v := m.Content[i+1]
		if v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			return v.Line + 1
		}
		return v.Line
	}
	return 0
}
