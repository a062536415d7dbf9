package postgres

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/mandate-authz/mandate/store/rel"
)

// relCols are a relationship's columns, in the order decode reads them.
const relCols = "resource_type, resource_id, relation, subject_type, subject_id, subject_relation, caveat_name, caveat_context, expiration"

// prefixed returns relCols qualified by a table alias.
func prefixed(alias string) string {
	parts := strings.Split(relCols, ", ")
	for i, p := range parts {
		parts[i] = alias + "." + p
	}
	return strings.Join(parts, ", ")
}

// keyExprs is the key in the order of the key indexes: each part followed
// by its separator, so that ordering by them is ordering by the key's text
// form (type:id#relation@type:id[#relation]). Queries must spell the
// expressions exactly so for the planner to use the indexes.
func keyExprs(alias string) string {
	a := alias + "."
	return "(" + a + "resource_type || ':'), (" + a + "resource_id || '#'), (" + a + "relation || '@'), (" +
		a + "subject_type || ':'), " + a + "subject_id, " + a + "subject_relation"
}

// params collects a statement's arguments, naming each placeholder.
type params struct{ list []any }

func (p *params) add(v any) string {
	p.list = append(p.list, v)
	return "$" + strconv.Itoa(len(p.list))
}

// liveSQL is the condition that a row of alias has not expired at now.
func liveSQL(alias, now string) string {
	return "(" + alias + ".expiration IS NULL OR " + alias + ".expiration > " + now + ")"
}

// filterSQL renders f as conditions on alias ("TRUE" for the empty
// filter). Resource parts are compared in their key-index form so that
// the index serves them.
func filterSQL(f rel.Filter, alias string, p *params) string {
	a := alias + "."
	var conds []string
	if f.ResourceType != "" {
		conds = append(conds, "("+a+"resource_type || ':') = "+p.add(f.ResourceType+":"))
	}
	if len(f.ResourceIDs) > 0 {
		ids := make([]string, len(f.ResourceIDs))
		for i, id := range f.ResourceIDs {
			ids[i] = id + "#"
		}
		conds = append(conds, "("+a+"resource_id || '#') = ANY("+p.add(ids)+"::text[])")
	}
	if f.Relation != "" {
		conds = append(conds, "("+a+"relation || '@') = "+p.add(f.Relation+"@"))
	}
	if f.SubjectType != "" {
		conds = append(conds, a+"subject_type = "+p.add(f.SubjectType))
	}
	if f.SubjectID != "" {
		conds = append(conds, a+"subject_id = "+p.add(f.SubjectID))
	}
	if f.SubjectRelation != nil {
		conds = append(conds, a+"subject_relation = "+p.add(*f.SubjectRelation))
	}
	if len(conds) == 0 {
		return "TRUE"
	}
	return strings.Join(conds, " AND ")
}

// columns holds relationships column-wise, to be sent as arrays and
// expanded with unnest: one statement for any batch size.
type columns struct {
	resType, resID, relation, subjType, subjID, subjRel []string
	caveat                                              []string
	context                                             []pgtype.Text
	expiration                                          []pgtype.Timestamptz
}

func (c *columns) len() int { return len(c.resType) }

func (c *columns) grow(n int) {
	for _, col := range []*[]string{&c.resType, &c.resID, &c.relation, &c.subjType, &c.subjID, &c.subjRel, &c.caveat} {
		*col = slices.Grow(*col, n)
	}
	c.context = slices.Grow(c.context, n)
	c.expiration = slices.Grow(c.expiration, n)
}

func (c *columns) addKey(k rel.Key) {
	c.resType = append(c.resType, k.Resource.Type)
	c.resID = append(c.resID, k.Resource.ID)
	c.relation = append(c.relation, k.Relation)
	c.subjType = append(c.subjType, k.Subject.Type)
	c.subjID = append(c.subjID, k.Subject.ID)
	c.subjRel = append(c.subjRel, k.Subject.Relation)
}

func (c *columns) add(r rel.Relationship) error {
	c.addKey(r.Key())
	var name string
	var ctx pgtype.Text
	if r.Caveat != nil {
		name = r.Caveat.Name
		// An empty context is no context, so both spellings read back
		// alike.
		if len(r.Caveat.Context) > 0 {
			b, err := json.Marshal(r.Caveat.Context)
			if err != nil {
				return fmt.Errorf("%s: caveat context: %w", r.Key(), err)
			}
			ctx = pgtype.Text{String: string(b), Valid: true}
		}
	}
	c.caveat = append(c.caveat, name)
	c.context = append(c.context, ctx)
	var exp pgtype.Timestamptz
	if !r.Expiration.IsZero() {
		exp = pgtype.Timestamptz{Time: r.Expiration.Truncate(time.Microsecond), Valid: true}
	}
	c.expiration = append(c.expiration, exp)
	return nil
}

// keyArgs returns the key arrays as arguments.
func (c *columns) keyArgs(p *params) (rt, rid, rl, st, sid, srel string) {
	return p.add(c.resType), p.add(c.resID), p.add(c.relation), p.add(c.subjType), p.add(c.subjID), p.add(c.subjRel)
}

// pgEpoch is PostgreSQL's timestamp origin, in Unix microseconds.
const pgEpochMicros = 946_684_800_000_000

// decoder turns rows into relationships. It interns the repetitive parts
// (types, relations, caveat names), which saves an allocation per part on
// snapshot loads and memory in whoever keeps the results.
type decoder struct {
	intern map[string]string
	types  *pgtype.Map
}

func newDecoder() *decoder {
	return &decoder{intern: make(map[string]string), types: pgtype.NewMap()}
}

// maxInterned bounds the intern table: the parts it holds come from the
// schema, so a store needs far fewer.
const maxInterned = 10_000

func (d *decoder) str(b []byte) string {
	if s, ok := d.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(d.intern) < maxInterned {
		d.intern[s] = s
	}
	return s
}

// decode reads relCols starting at column off of the current row.
func (d *decoder) decode(rows pgx.Rows, off int) (rel.Relationship, error) {
	vals := rows.RawValues()
	fields := rows.FieldDescriptions()
	if len(vals) < off+9 {
		return rel.Relationship{}, fmt.Errorf("row has %d columns, expected %d", len(vals), off+9)
	}
	v := vals[off : off+9]
	r := rel.Relationship{
		Resource: rel.Object{Type: d.str(v[0]), ID: string(v[1])},
		Relation: d.str(v[2]),
		Subject:  rel.Subject{Type: d.str(v[3]), ID: string(v[4]), Relation: d.str(v[5])},
	}
	if len(v[6]) > 0 {
		r.Caveat = &rel.Caveat{Name: d.str(v[6])}
		if ctx := v[7]; ctx != nil {
			if fields[off+7].Format == pgx.BinaryFormatCode && fields[off+7].DataTypeOID == pgtype.JSONBOID {
				if len(ctx) == 0 || ctx[0] != 1 {
					return rel.Relationship{}, fmt.Errorf("%s: unknown jsonb format", r.Key())
				}
				ctx = ctx[1:]
			}
			if err := json.Unmarshal(ctx, &r.Caveat.Context); err != nil {
				return rel.Relationship{}, fmt.Errorf("%s: caveat context: %w", r.Key(), err)
			}
		}
	}
	if exp := v[8]; exp != nil {
		f := fields[off+8]
		if f.Format == pgx.BinaryFormatCode && f.DataTypeOID == pgtype.TimestamptzOID && len(exp) == 8 {
			us := int64(binary.BigEndian.Uint64(exp)) + pgEpochMicros
			r.Expiration = time.UnixMicro(us).UTC()
		} else {
			var ts pgtype.Timestamptz
			if err := d.types.Scan(f.DataTypeOID, f.Format, exp, &ts); err != nil {
				return rel.Relationship{}, fmt.Errorf("%s: expiration: %w", r.Key(), err)
			}
			r.Expiration = ts.Time.UTC()
		}
	}
	return r, nil
}
