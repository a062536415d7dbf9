// Package store defines the durable truth behind Mandate: relationships and
// the schema, written in transactions that each produce a new revision from a
// totally ordered sequence, readable at any retained revision, and followable
// as a change stream. Implementations live in subpackages.
package store

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store/rel"
)

// Revision is a position in the store's totally ordered sequence of writes.
// Zero is the empty store before any write.
type Revision uint64

// Op is what a mutation does.
type Op uint8

const (
	// Create writes a relationship that must not exist yet.
	Create Op = iota + 1
	// Touch writes a relationship, replacing any existing one with the same key.
	Touch
	// Delete removes a relationship if it exists.
	Delete
)

func (o Op) String() string {
	switch o {
	case Create:
		return "CREATE"
	case Touch:
		return "TOUCH"
	case Delete:
		return "DELETE"
	}
	return fmt.Sprintf("op(%d)", o)
}

// Mutation is one relationship change within a write.
type Mutation struct {
	Op  Op
	Rel rel.Relationship
}

// Precondition must hold at the start of a write for the write to apply.
type Precondition struct {
	// MustExist requires at least one relationship matching Filter; when
	// false, none may match.
	MustExist bool
	Filter    rel.Filter
}

// Update is one applied change in the change stream: a Touch carries the
// relationship as it now is; a Delete the relationship that was removed.
type Update struct {
	Op  Op
	Rel rel.Relationship
}

// Change is everything one revision changed.
type Change struct {
	Revision Revision
	// Schema is the new schema text when this revision wrote the schema.
	Schema  *string
	Updates []Update
}

// Store is the durable truth. Every method is safe for concurrent use.
type Store interface {
	// Head returns the latest committed revision.
	Head(ctx context.Context) (Revision, error)
	// WriteSchema replaces the schema. It fails with ErrInvalidSchema when
	// the text does not compile and with ErrSchemaOrphans when existing
	// relationships would no longer be valid under it.
	WriteSchema(ctx context.Context, text string) (Revision, error)
	// ReadSchema returns the schema text in force at rev ("" when none was
	// ever written) and the revision that wrote it.
	ReadSchema(ctx context.Context, rev Revision) (text string, writtenAt Revision, err error)
	// Write applies mutations atomically after checking preconditions. Every
	// relationship is validated against the current schema; on any error,
	// nothing is written.
	Write(ctx context.Context, preconditions []Precondition, mutations []Mutation) (Revision, error)
	// DeleteMatching deletes up to limit relationships matching filter
	// (limit 0: all) atomically. It returns the new revision and how many were
	// deleted; when more than limit match, it deletes none and returns
	// ErrLimitExceeded.
	DeleteMatching(ctx context.Context, preconditions []Precondition, filter rel.Filter, limit int) (Revision, int, error)
	// Read yields the relationships matching filter as of rev, in key order
	// (rel.Key.Compare), leaving out those expired at the time of the call.
	// With a nil after it starts at the first key; otherwise it yields only
	// keys strictly after *after, which need not be stored, so a page ends
	// at its last key and the next page resumes from it at the same rev
	// without reading what came before.
	Read(ctx context.Context, rev Revision, filter rel.Filter, after *rel.Key) iter.Seq2[rel.Relationship, error]
	// Watch yields every change after rev in revision order, waiting for new
	// ones until ctx is done. It fails with ErrRevisionGone when changes
	// after rev are no longer retained.
	Watch(ctx context.Context, after Revision) iter.Seq2[Change, error]
	// Close releases the store's resources.
	Close() error
}

// Optional capabilities. A store may implement any of these beside Store;
// callers find them with a type assertion, as database/sql finds
// driver.Pinger, and do without when a store lacks one.

// HistoryReleaser is a store that releases history on request, so that the
// server's revision retention bounds the store's as well as the engine's.
// Stores that collect their own garbage on a schedule may offer it too.
type HistoryReleaser interface {
	// ForgetBefore releases history older than rev (at most the head):
	// reads at earlier revisions and watches from before it fail with
	// ErrRevisionGone afterwards. A read already under way may still fail
	// with ErrRevisionGone part way.
	ForgetBefore(ctx context.Context, rev Revision) error
}

// Errors a store reports; wrap with context and test with errors.Is.
var (
	ErrInvalidSchema       = errors.New("invalid schema")
	ErrSchemaOrphans       = errors.New("schema change would orphan existing relationships")
	ErrNoSchema            = errors.New("no schema has been written")
	ErrInvalidRelationship = errors.New("invalid relationship")
	ErrAlreadyExists       = errors.New("relationship already exists")
	ErrPreconditionFailed  = errors.New("precondition failed")
	ErrLimitExceeded       = errors.New("more relationships match than the limit allows")
	ErrRevisionGone        = errors.New("revision is no longer retained")
	ErrFutureRevision      = errors.New("revision is ahead of the store")
	ErrTooManyMutations    = errors.New("too many mutations in one write")
)

// MaxMutationsPerWrite bounds one Write; larger batches must be split.
const MaxMutationsPerWrite = 100_000

// ValidateMutations checks a write's mutations against the schema and
// against each other (a key may appear only once per write), returning an
// error wrapping ErrInvalidRelationship that names the offending mutation.
func ValidateMutations(sch *schema.Schema, mutations []Mutation) error {
	if len(mutations) > MaxMutationsPerWrite {
		return fmt.Errorf("%w: %d mutations, at most %d", ErrTooManyMutations, len(mutations), MaxMutationsPerWrite)
	}
	seen := make(map[rel.Key]int, len(mutations))
	for i, m := range mutations {
		if m.Op != Create && m.Op != Touch && m.Op != Delete {
			return fmt.Errorf("%w: mutation %d: unknown operation %d", ErrInvalidRelationship, i, m.Op)
		}
		if sch == nil {
			return fmt.Errorf("%w: mutation %d (%s): %w", ErrInvalidRelationship, i, m.Rel.Key(), ErrNoSchema)
		}
		var err error
		if m.Op == Delete {
			// A delete names a key; its caveat and expiration do not matter,
			// but its types and relation must still make sense.
			err = validateKey(sch, m.Rel)
		} else {
			err = sch.ValidateRelationship(m.Rel)
		}
		if err != nil {
			return fmt.Errorf("%w: mutation %d (%s): %w", ErrInvalidRelationship, i, m.Rel.Key(), err)
		}
		if j, dup := seen[m.Rel.Key()]; dup {
			return fmt.Errorf("%w: mutations %d and %d both change %s", ErrInvalidRelationship, j, i, m.Rel.Key())
		}
		seen[m.Rel.Key()] = i
	}
	return nil
}

func validateKey(sch *schema.Schema, r rel.Relationship) error {
	if err := r.Validate(); err != nil {
		return err
	}
	relation := sch.Relation(r.Resource.Type, r.Relation)
	if relation == nil {
		if sch.Definition(r.Resource.Type) == nil {
			return fmt.Errorf("resource type %q is not defined in the schema", r.Resource.Type)
		}
		return fmt.Errorf("relation %q is not defined on %q", r.Relation, r.Resource.Type)
	}
	if relation.IsPermission {
		return fmt.Errorf("%s#%s is a permission; relationships can only be written to relations", r.Resource.Type, r.Relation)
	}
	return nil
}

// OrphansUnder lists the relationships (at most limit) that would be invalid
// under a new schema; a schema write must be refused while any exist.
func OrphansUnder(sch *schema.Schema, rels iter.Seq2[rel.Relationship, error], limit int) ([]string, error) {
	var orphans []string
	for r, err := range rels {
		if err != nil {
			return nil, err
		}
		if verr := sch.ValidateRelationship(r); verr != nil {
			orphans = append(orphans, fmt.Sprintf("%s: %v", r, verr))
			if len(orphans) >= limit {
				break
			}
		}
	}
	return orphans, nil
}
