// Package rel defines relationships, the facts the store holds, and their text
// form as used in SpiceDB validation files:
//
//	doc:1#viewer@user:ann[is_ok:{"x":1}][expiration:2030-01-01T00:00:00Z]
//
// It has no knowledge of any schema; schema.Schema validates relationships
// against definitions.
package rel

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/authzed/spicedb/pkg/tuple"
)

// Wildcard is the subject ID that stands for every subject of a type.
const Wildcard = "*"

// Object names one object: a type and an ID.
type Object struct {
	Type string
	ID   string
}

func (o Object) String() string { return o.Type + ":" + o.ID }

// Subject is the subject of a relationship or a check: an object, optionally
// with a relation (a userset such as group:eng#member). An empty Relation is
// the object itself (SpiceDB's "..." ellipsis).
type Subject struct {
	Type     string
	ID       string
	Relation string
}

func (s Subject) String() string {
	if s.Relation == "" {
		return s.Type + ":" + s.ID
	}
	return s.Type + ":" + s.ID + "#" + s.Relation
}

// Object returns the subject's object, without relation.
func (s Subject) Object() Object { return Object{Type: s.Type, ID: s.ID} }

// IsWildcard reports whether the subject is a type wildcard such as user:*.
func (s Subject) IsWildcard() bool { return s.ID == Wildcard }

// Caveat is a named caveat with the context written on the relationship.
type Caveat struct {
	Name    string
	Context map[string]any
}

// Relationship is one fact: resource#relation@subject, optionally caveated and
// optionally expiring.
type Relationship struct {
	Resource Object
	Relation string
	Subject  Subject
	Caveat   *Caveat
	// Expiration is the instant from which the relationship no longer exists;
	// the zero time means it never expires.
	Expiration time.Time
}

// Key identifies a relationship regardless of its caveat and expiration: the
// store holds at most one relationship per key.
type Key struct {
	Resource Object
	Relation string
	Subject  Subject
}

// Key returns the relationship's identity.
func (r Relationship) Key() Key {
	return Key{Resource: r.Resource, Relation: r.Relation, Subject: r.Subject}
}

func (k Key) String() string {
	return k.Resource.String() + "#" + k.Relation + "@" + k.Subject.String()
}

// Compare orders keys as their text forms (String) compare bytewise,
// returning -1, 0 or +1; it allocates nothing. This is the one key order
// every store reads in and every read cursor resumes by. It is not the
// order of the fields taken one by one: "doc" sorts after "doc1" because
// ':' follows the digits.
func (k Key) Compare(o Key) int {
	a, b := k.textParts(), o.textParts()
	var i, j int   // current part of a and of b
	var ai, bj int // offset into it
	for {
		for i < len(a) && ai == len(a[i]) {
			i, ai = i+1, 0
		}
		for j < len(b) && bj == len(b[j]) {
			j, bj = j+1, 0
		}
		switch {
		case i == len(a) && j == len(b):
			return 0
		case i == len(a):
			return -1
		case j == len(b):
			return 1
		}
		n := min(len(a[i])-ai, len(b[j])-bj)
		if c := strings.Compare(a[i][ai:ai+n], b[j][bj:bj+n]); c != 0 {
			return c
		}
		ai, bj = ai+n, bj+n
	}
}

// textParts are the pieces whose concatenation is String.
func (k Key) textParts() [11]string {
	p := [11]string{k.Resource.Type, ":", k.Resource.ID, "#", k.Relation, "@", k.Subject.Type, ":", k.Subject.ID}
	if k.Subject.Relation != "" {
		p[9], p[10] = "#", k.Subject.Relation
	}
	return p
}

// ExpiredAt reports whether the relationship no longer exists at instant t.
func (r Relationship) ExpiredAt(t time.Time) bool {
	return !r.Expiration.IsZero() && !t.Before(r.Expiration)
}

// String renders the relationship in validation-file text form.
func (r Relationship) String() string {
	var b strings.Builder
	b.WriteString(r.Key().String())
	if r.Caveat != nil {
		b.WriteString("[")
		b.WriteString(r.Caveat.Name)
		if len(r.Caveat.Context) > 0 {
			ctx, err := json.Marshal(r.Caveat.Context)
			if err == nil {
				b.WriteString(":")
				b.Write(ctx)
			}
		}
		b.WriteString("]")
	}
	if !r.Expiration.IsZero() {
		b.WriteString("[expiration:")
		// RFC3339Nano keeps sub-second precision (and prints none when
		// there is none), so String always parses back to an equal value.
		b.WriteString(r.Expiration.UTC().Format(time.RFC3339Nano))
		b.WriteString("]")
	}
	return b.String()
}

// Equal reports whether two relationships are identical, including caveat
// context and expiration.
func (r Relationship) Equal(o Relationship) bool {
	if r.Key() != o.Key() || !r.Expiration.Equal(o.Expiration) {
		return false
	}
	if (r.Caveat == nil) != (o.Caveat == nil) {
		return false
	}
	if r.Caveat == nil {
		return true
	}
	if r.Caveat.Name != o.Caveat.Name {
		return false
	}
	a, _ := json.Marshal(r.Caveat.Context)
	b, _ := json.Marshal(o.Caveat.Context)
	return string(a) == string(b)
}

// Clone returns a deep copy whose caveat context can be modified freely.
func (r Relationship) Clone() Relationship {
	if r.Caveat != nil {
		c := *r.Caveat
		c.Context = maps.Clone(c.Context)
		r.Caveat = &c
	}
	return r
}

// Parse reads a relationship in validation-file text form. The grammar and
// the ID character sets are SpiceDB's, so any relationship SpiceDB accepts
// parses identically here.
func Parse(text string) (Relationship, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return Relationship{}, errors.New("empty relationship: expected resource:id#relation@subject:id")
	}
	parsed, err := tuple.Parse(text)
	if err != nil {
		return Relationship{}, fmt.Errorf("relationship %q: %w (expected resource:id#relation@subject:id[#relation][caveat:{json}][expiration:RFC3339])", text, err)
	}
	if parsed.Resource.ObjectID == Wildcard {
		return Relationship{}, fmt.Errorf("relationship %q: the resource ID may not be a wildcard", text)
	}
	out := Relationship{
		Resource: Object{Type: parsed.Resource.ObjectType, ID: parsed.Resource.ObjectID},
		Relation: parsed.Resource.Relation,
		Subject:  Subject{Type: parsed.Subject.ObjectType, ID: parsed.Subject.ObjectID},
	}
	if parsed.Subject.Relation != tuple.Ellipsis {
		out.Subject.Relation = parsed.Subject.Relation
	}
	if out.Subject.IsWildcard() && out.Subject.Relation != "" {
		return Relationship{}, fmt.Errorf("relationship %q: a wildcard subject may not have a relation", text)
	}
	if c := parsed.OptionalCaveat; c != nil {
		out.Caveat = &Caveat{Name: c.CaveatName}
		if c.Context != nil && len(c.Context.Fields) > 0 {
			out.Caveat.Context = c.Context.AsMap()
		}
	}
	if parsed.OptionalExpiration != nil {
		out.Expiration = parsed.OptionalExpiration.UTC()
	}
	return out, nil
}

// ParseSubject reads a subject such as user:ann, group:eng#member or user:*.
func ParseSubject(text string) (Subject, error) {
	typ, rest, ok := strings.Cut(strings.TrimSpace(text), ":")
	if !ok || typ == "" || rest == "" {
		return Subject{}, fmt.Errorf("subject %q: expected type:id or type:id#relation", text)
	}
	id, relation, _ := strings.Cut(rest, "#")
	if relation == tuple.Ellipsis {
		relation = ""
	}
	s := Subject{Type: typ, ID: id, Relation: relation}
	if err := ValidateSubject(s); err != nil {
		return Subject{}, fmt.Errorf("subject %q: %w", text, err)
	}
	return s, nil
}

// ParseObjectRelation reads resource:id#relation, as used on the left of an
// assertion.
func ParseObjectRelation(text string) (Object, string, error) {
	left, relation, ok := strings.Cut(strings.TrimSpace(text), "#")
	if !ok || relation == "" {
		return Object{}, "", fmt.Errorf("%q: expected type:id#relation", text)
	}
	typ, id, ok := strings.Cut(left, ":")
	if !ok || typ == "" || id == "" {
		return Object{}, "", fmt.Errorf("%q: expected type:id#relation", text)
	}
	o := Object{Type: typ, ID: id}
	if err := ValidateObject(o); err != nil {
		return Object{}, "", fmt.Errorf("%q: %w", text, err)
	}
	if err := validateName("relation", relation); err != nil {
		return Object{}, "", fmt.Errorf("%q: %w", text, err)
	}
	return o, relation, nil
}

// ValidateObject checks an object's type and ID against SpiceDB's rules.
func ValidateObject(o Object) error {
	if err := validateName("object type", o.Type); err != nil {
		return err
	}
	if o.ID == Wildcard {
		return errors.New("object ID may not be a wildcard here")
	}
	return validateID("object ID", o.ID)
}

// ValidateSubject checks a subject's type, ID and relation against SpiceDB's rules.
func ValidateSubject(s Subject) error {
	if err := validateName("subject type", s.Type); err != nil {
		return err
	}
	if !s.IsWildcard() {
		if err := validateID("subject ID", s.ID); err != nil {
			return err
		}
	}
	if s.Relation != "" {
		if s.IsWildcard() {
			return errors.New("a wildcard subject may not have a relation")
		}
		if err := validateName("subject relation", s.Relation); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the syntax of every part of a relationship (not its
// agreement with a schema).
func (r Relationship) Validate() error {
	if err := ValidateObject(r.Resource); err != nil {
		return fmt.Errorf("resource: %w", err)
	}
	if err := validateName("relation", r.Relation); err != nil {
		return err
	}
	if err := ValidateSubject(r.Subject); err != nil {
		return fmt.Errorf("subject: %w", err)
	}
	if r.Caveat != nil {
		if err := validateName("caveat name", r.Caveat.Name); err != nil {
			return err
		}
	}
	return nil
}

// MaxIDLength is the longest object ID accepted, as in SpiceDB's API.
const MaxIDLength = 1024

// validateID enforces SpiceDB's object ID character set,
// [a-zA-Z0-9/_|\-=+], without a regular expression: it runs on every check.
func validateID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("%s is %d bytes long, at most %d allowed", what, len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '/' || c == '_' || c == '|' || c == '-' || c == '=' || c == '+':
		default:
			return fmt.Errorf("%s %q: character %q is not allowed (allowed: letters, digits and / _ | - = +)", what, id, c)
		}
	}
	return nil
}

// validateName enforces SpiceDB's identifier rule for types, relations and
// caveats: a lowercase letter, then lowercase letters, digits or underscores,
// optionally prefixed by path segments ending in '/', at most 64 characters
// per segment.
func validateName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(name) > 128 {
		return fmt.Errorf("%s %q is longer than 128 characters", what, name)
	}
	// strings.SplitSeq: no slice allocated on the check path.
	for seg := range strings.SplitSeq(name, "/") {
		if len(seg) < 1 || len(seg) > 64 {
			return fmt.Errorf("%s %q: each segment must be 1 to 64 characters", what, name)
		}
		for i, c := range seg {
			switch {
			case c >= 'a' && c <= 'z':
			case i > 0 && (c >= '0' && c <= '9' || c == '_'):
			default:
				return fmt.Errorf("%s %q: expected a lowercase letter followed by lowercase letters, digits or underscores", what, name)
			}
		}
	}
	return nil
}

// Filter selects relationships. Empty fields match anything.
type Filter struct {
	ResourceType string
	ResourceIDs  []string
	Relation     string
	SubjectType  string
	SubjectID    string
	// SubjectRelation, when non-nil, must equal the subject's relation
	// ("" for none).
	SubjectRelation *string
}

// Matches reports whether r passes the filter.
func (f Filter) Matches(r Relationship) bool {
	if f.ResourceType != "" && r.Resource.Type != f.ResourceType {
		return false
	}
	if len(f.ResourceIDs) > 0 && !contains(f.ResourceIDs, r.Resource.ID) {
		return false
	}
	if f.Relation != "" && r.Relation != f.Relation {
		return false
	}
	if f.SubjectType != "" && r.Subject.Type != f.SubjectType {
		return false
	}
	if f.SubjectID != "" && r.Subject.ID != f.SubjectID {
		return false
	}
	if f.SubjectRelation != nil && r.Subject.Relation != *f.SubjectRelation {
		return false
	}
	return true
}

// IsEmpty reports whether the filter matches everything.
func (f Filter) IsEmpty() bool {
	return f.ResourceType == "" && len(f.ResourceIDs) == 0 && f.Relation == "" &&
		f.SubjectType == "" && f.SubjectID == "" && f.SubjectRelation == nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Sort orders relationships by key (Key.Compare), for stable output.
func Sort(rels []Relationship) {
	slices.SortFunc(rels, func(a, b Relationship) int { return a.Key().Compare(b.Key()) })
}
