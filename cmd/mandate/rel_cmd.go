package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/rel"
)

func newRelCommand() *cobra.Command {
	o := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "rel",
		Short: "Write, delete or read relationships",
		Long: `Rel changes and reads the server's relationships, written in validation-file text form:

  doc:readme#viewer@user:alice
  doc:budget#viewer@user:bob[within_limit:{"limit":100}][expiration:2030-01-01T00:00:00Z]`,
	}
	addClientFlags(cmd.PersistentFlags(), o)
	cmd.AddCommand(
		newRelUpdateCommand(o, "write", pb.RelationshipUpdate_OPERATION_CREATE, "Create relationships; fails if any already exists"),
		newRelUpdateCommand(o, "touch", pb.RelationshipUpdate_OPERATION_TOUCH, "Create relationships or replace existing ones (caveat, expiration)"),
		newRelDeleteCommand(o),
		newRelReadCommand(o),
	)
	return cmd
}

// newRelUpdateCommand builds write, touch or delete: one atomic
// WriteRelationships of the given operation.
func newRelUpdateCommand(o *clientOptions, name string, op pb.RelationshipUpdate_Operation, short string) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   name + " [RELATIONSHIP...]",
		Short: short,
		Long: short + `. Relationships come as arguments or, with --file, one a line from a
file (- for standard input; blank lines and lines starting with // or # are skipped).
All are applied atomically.`,
		Example: fmt.Sprintf("  mandate rel %s doc:readme#viewer@user:alice\n  mandate rel %s --file rels.txt", name, name),
		RunE: func(cmd *cobra.Command, args []string) error {
			rels, err := collectRelationships(cmd, args, file)
			if err != nil {
				return err
			}
			updates := make([]*pb.RelationshipUpdate, len(rels))
			for i, r := range rels {
				updates[i] = &pb.RelationshipUpdate{Operation: op, Relationship: r}
			}
			c, ctx, cancel, err := connect(cmd, o)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			resp, err := c.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: updates})
			if err != nil {
				return c.callError("rel "+name, err)
			}
			verb := map[string]string{"write": "written", "touch": "touched", "delete": "deleted"}[name]
			fmt.Fprintf(cmd.OutOrStdout(), "%d relationship(s) %s\nrevision: %s\n", len(updates), verb, resp.GetWrittenAt().GetToken())
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "read relationships from this file, one a line (- for standard input)")
	return cmd
}

// collectRelationships parses the relationships given as arguments and in
// file, naming the one that does not parse.
func collectRelationships(cmd *cobra.Command, args []string, file string) ([]*pb.Relationship, error) {
	var out []*pb.Relationship
	for i, a := range args {
		r, err := relationshipProto(a)
		if err != nil {
			return nil, fmt.Errorf("argument %d: %w", i+1, err)
		}
		out = append(out, r)
	}
	if file != "" {
		var in io.Reader
		if file == "-" {
			in = cmd.InOrStdin()
		} else {
			f, err := os.Open(file)
			if err != nil {
				return nil, fmt.Errorf("--file: %w", err)
			}
			defer f.Close()
			in = f
		}
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64*1024), 4<<20)
		for line := 1; sc.Scan(); line++ {
			text := strings.TrimSpace(sc.Text())
			if text == "" || strings.HasPrefix(text, "#") || strings.HasPrefix(text, "//") {
				continue
			}
			r, err := relationshipProto(text)
			if err != nil {
				return nil, fmt.Errorf("%s line %d: %w", file, line, err)
			}
			out = append(out, r)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("--file %s: %w", file, err)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no relationships given: pass them as arguments or with --file")
	}
	return out, nil
}

// relationshipProto parses one relationship in validation-file text form.
func relationshipProto(text string) (*pb.Relationship, error) {
	r, err := rel.Parse(text)
	if err != nil {
		return nil, err
	}
	out := &pb.Relationship{
		Resource: &pb.ObjectReference{ObjectType: r.Resource.Type, ObjectId: r.Resource.ID},
		Relation: r.Relation,
		Subject:  subjectProto(r.Subject),
	}
	if r.Caveat != nil {
		c := &pb.ContextualizedCaveat{CaveatName: r.Caveat.Name}
		if len(r.Caveat.Context) > 0 {
			if c.Context, err = structpb.NewStruct(r.Caveat.Context); err != nil {
				return nil, fmt.Errorf("relationship %q: caveat context: %w", text, err)
			}
		}
		out.OptionalCaveat = c
	}
	if !r.Expiration.IsZero() {
		out.OptionalExpiresAt = timestamppb.New(r.Expiration)
	}
	return out, nil
}

// relationshipText renders a relationship read from the server in
// validation-file text form.
func relationshipText(p *pb.Relationship) string {
	r := rel.Relationship{
		Resource: rel.Object{Type: p.GetResource().GetObjectType(), ID: p.GetResource().GetObjectId()},
		Relation: p.GetRelation(),
		Subject: rel.Subject{
			Type:     p.GetSubject().GetObject().GetObjectType(),
			ID:       p.GetSubject().GetObject().GetObjectId(),
			Relation: p.GetSubject().GetOptionalRelation(),
		},
	}
	if c := p.GetOptionalCaveat(); c != nil {
		r.Caveat = &rel.Caveat{Name: c.GetCaveatName()}
		if len(c.GetContext().GetFields()) > 0 {
			r.Caveat.Context = c.GetContext().AsMap()
		}
	}
	if ts := p.GetOptionalExpiresAt(); ts != nil {
		r.Expiration = ts.AsTime()
	}
	return r.String()
}

type relReadOptions struct {
	cons        consistencyOptions
	resourceIDs []string
	relation    string
	subject     string
	subjectRel  string
	limit       uint32
}

func newRelReadCommand(o *clientOptions) *cobra.Command {
	ro := &relReadOptions{}
	cmd := &cobra.Command{
		Use:   "read [RESOURCE_TYPE]",
		Short: "Print the relationships matching a filter, one a line",
		Long: `Read prints the relationships of RESOURCE_TYPE (all types when omitted) that match the
filter flags, in validation-file text form, then the revision they were read at.`,
		Example: "  mandate rel read doc --relation viewer --subject user:alice\n" +
			"  mandate rel read doc --resource-id readme --subject group --subject-relation member",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			filter := &pb.RelationshipFilter{OptionalResourceIds: ro.resourceIDs, OptionalRelation: ro.relation}
			if len(args) == 1 {
				filter.ResourceType = args[0]
			}
			if ro.subject != "" {
				typ, id, _ := strings.Cut(ro.subject, ":")
				if typ == "" || strings.Contains(id, "#") {
					return fmt.Errorf("--subject %q: expected type or type:id (use --subject-relation for the relation)", ro.subject)
				}
				filter.OptionalSubjectFilter = &pb.SubjectFilter{SubjectType: typ, OptionalSubjectId: id}
			}
			if cmd.Flags().Changed("subject-relation") {
				if filter.OptionalSubjectFilter == nil {
					return errors.New("--subject-relation needs --subject")
				}
				filter.OptionalSubjectFilter.OptionalRelation = &pb.RelationFilter{Relation: ro.subjectRel}
			}
			consistency, err := ro.cons.consistency()
			if err != nil {
				return err
			}
			c, ctx, cancel, err := connect(cmd, o)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			stream, err := c.rels.ReadRelationships(ctx, &pb.ReadRelationshipsRequest{Consistency: consistency, Filter: filter, OptionalLimit: ro.limit})
			if err != nil {
				return c.callError("rel read", err)
			}
			out := cmd.OutOrStdout()
			var token string
			for {
				r, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					return c.callError("rel read", err)
				}
				token = r.GetReadAt().GetToken()
				fmt.Fprintln(out, relationshipText(r.GetRelationship()))
			}
			if token != "" {
				// On stderr, so that stdout can be fed back to rel write --file -.
				fmt.Fprintf(cmd.ErrOrStderr(), "revision: %s\n", token)
			}
			return nil
		},
	}
	f := cmd.Flags()
	addConsistencyFlags(f, &ro.cons)
	f.StringArrayVar(&ro.resourceIDs, "resource-id", nil, "only these resource IDs (repeatable)")
	f.StringVar(&ro.relation, "relation", "", "only this relation")
	f.StringVar(&ro.subject, "subject", "", "only subjects of this type, or this type:id")
	f.StringVar(&ro.subjectRel, "subject-relation", "", `only subjects with this relation ("" for none); needs --subject`)
	f.Uint32Var(&ro.limit, "limit", 0, "print at most this many (0: all)")
	return cmd
}

// filterKeys are the keys of a --filter, in the order help lists them.
var filterKeys = []string{"resource_type", "resource_id", "relation", "subject_type", "subject_id", "subject_relation"}

// filterSpec is a relationship filter as given on the command line.
type filterSpec struct {
	resourceType    string
	resourceIDs     []string
	relation        string
	subjectType     string
	subjectID       string
	subjectRelation *string // nil: any; "": subjects without a relation
}

// parseFilter reads a filter written as comma-separated key=value pairs,
// such as "resource_type=doc,relation=viewer,subject_type=user". Keys are
// filterKeys (dashes may replace underscores); resource_id may repeat;
// "subject_relation=" matches subjects without a relation. A bare word with
// no "=" is a resource type, so "--filter doc" works. what names the flag
// for errors.
func parseFilter(what, text string) (filterSpec, error) {
	var f filterSpec
	text = strings.TrimSpace(text)
	if text == "" {
		return f, fmt.Errorf("%s: empty; expected key=value pairs such as resource_type=doc,relation=viewer", what)
	}
	if !strings.ContainsAny(text, "=,") {
		f.resourceType = text
		return f, nil
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(text, ",") {
		part = strings.TrimSpace(part)
		key, value, ok := strings.Cut(part, "=")
		key = strings.ReplaceAll(strings.TrimSpace(key), "-", "_")
		value = strings.TrimSpace(value)
		if !ok || key == "" {
			return f, fmt.Errorf("%s %q: %q is not key=value (keys: %s)", what, text, part, strings.Join(filterKeys, ", "))
		}
		if seen[key] && key != "resource_id" {
			return f, fmt.Errorf("%s %q: %s is given twice", what, text, key)
		}
		seen[key] = true
		if value == "" && key != "subject_relation" {
			return f, fmt.Errorf("%s %q: %s has no value", what, text, key)
		}
		switch key {
		case "resource_type":
			f.resourceType = value
		case "resource_id":
			f.resourceIDs = append(f.resourceIDs, value)
		case "relation":
			f.relation = value
		case "subject_type":
			f.subjectType = value
		case "subject_id":
			f.subjectID = value
		case "subject_relation":
			f.subjectRelation = &value
		default:
			return f, fmt.Errorf("%s %q: unknown key %q; expected one of %s", what, text, key, strings.Join(filterKeys, ", "))
		}
	}
	return f, f.check(what)
}

// check rejects filters the server would refuse for reasons the user can
// fix here: a subject ID or relation without a subject type.
func (f filterSpec) check(what string) error {
	if f.subjectType == "" && (f.subjectID != "" || f.subjectRelation != nil) {
		return fmt.Errorf("%s: subject_id and subject_relation need subject_type", what)
	}
	return nil
}

func (f filterSpec) proto() *pb.RelationshipFilter {
	out := &pb.RelationshipFilter{ResourceType: f.resourceType, OptionalResourceIds: f.resourceIDs, OptionalRelation: f.relation}
	if f.subjectType != "" {
		out.OptionalSubjectFilter = &pb.SubjectFilter{SubjectType: f.subjectType, OptionalSubjectId: f.subjectID}
		if f.subjectRelation != nil {
			out.OptionalSubjectFilter.OptionalRelation = &pb.RelationFilter{Relation: *f.subjectRelation}
		}
	}
	return out
}

// deleteFilterOptions are `rel delete`'s flags for deleting by filter.
type deleteFilterOptions struct {
	filter          string
	spec            filterSpec // the field flags
	subjectRelation string
	limit           uint32
}

// fieldFlags are the flags that each set one field of the delete filter.
var fieldFlags = []string{"resource-type", "resource-id", "relation", "subject-type", "subject-id", "subject-relation"}

// newRelDeleteCommand deletes exact relationships (as rel write takes them)
// or, with --filter or the field flags, every relationship matching a
// filter through DeleteRelationships.
func newRelDeleteCommand(o *clientOptions) *cobra.Command {
	cmd := newRelUpdateCommand(o, "delete", pb.RelationshipUpdate_OPERATION_DELETE, "Delete relationships (missing ones are ignored)")
	exact := cmd.RunE
	do := &deleteFilterOptions{}
	cmd.Use = "delete [RELATIONSHIP...] | --filter FILTER | --resource-type TYPE [...]"
	cmd.Short = "Delete relationships, given exactly or by filter"
	cmd.Long = `Delete removes relationships, in one atomic write.

Given exactly, as arguments or with --file (one a line, - for standard input), they
are deleted; missing ones are ignored.

By filter, every relationship matching it is deleted, or none when more than --limit
match (the server's maximum, 1000 by default, when --limit is 0). The filter is
--filter with comma-separated key=value pairs:

  resource_type (required), resource_id (repeatable), relation,
  subject_type, subject_id, subject_relation ("subject_relation=" for none)

or the same fields as flags (--resource-type, --resource-id, ...), not both.`
	cmd.Example = `  mandate rel delete doc:readme#viewer@user:alice
  mandate rel delete --filter resource_type=doc,relation=viewer,subject_type=user,subject_id=alice
  mandate rel delete --resource-type doc --resource-id readme --limit 100`
	f := cmd.Flags()
	f.StringVar(&do.filter, "filter", "", "delete every relationship matching this filter (key=value,...; see above)")
	f.StringVar(&do.spec.resourceType, "resource-type", "", "delete by filter: relationships of this resource type")
	f.StringArrayVar(&do.spec.resourceIDs, "resource-id", nil, "delete by filter: only these resource IDs (repeatable)")
	f.StringVar(&do.spec.relation, "relation", "", "delete by filter: only this relation")
	f.StringVar(&do.spec.subjectType, "subject-type", "", "delete by filter: only subjects of this type")
	f.StringVar(&do.spec.subjectID, "subject-id", "", "delete by filter: only this subject ID (needs --subject-type)")
	f.StringVar(&do.subjectRelation, "subject-relation", "", `delete by filter: only subjects with this relation ("" for none; needs --subject-type)`)
	f.Uint32Var(&do.limit, "limit", 0, "delete by filter: fail, deleting nothing, when more than this many match (0: the server's maximum)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		fields := false
		for _, name := range fieldFlags {
			fields = fields || cmd.Flags().Changed(name)
		}
		byFilter := cmd.Flags().Changed("filter") || fields
		if !byFilter {
			if cmd.Flags().Changed("limit") {
				return errors.New("--limit applies to deleting by filter: add --filter or the field flags")
			}
			return exact(cmd, args)
		}
		if len(args) > 0 || cmd.Flags().Changed("file") {
			return errors.New("delete either exact relationships (arguments or --file) or by filter (--filter or the field flags), not both")
		}
		spec := do.spec
		if cmd.Flags().Changed("filter") {
			if fields {
				return errors.New("--filter and the field flags (--resource-type, ...) are exclusive: give one")
			}
			var err error
			if spec, err = parseFilter("--filter", do.filter); err != nil {
				return err
			}
		} else {
			if cmd.Flags().Changed("subject-relation") {
				spec.subjectRelation = &do.subjectRelation
			}
			if err := spec.check("filter flags"); err != nil {
				return err
			}
		}
		if spec.resourceType == "" {
			return errors.New("deleting by filter needs a resource type (resource_type=... or --resource-type), so that a delete cannot remove everything by accident")
		}
		return runDeleteByFilter(cmd, o, spec, do.limit)
	}
	return cmd
}

func runDeleteByFilter(cmd *cobra.Command, o *clientOptions, spec filterSpec, limit uint32) error {
	c, ctx, cancel, err := connect(cmd, o)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.close()
	resp, err := c.rels.DeleteRelationships(ctx, &pb.DeleteRelationshipsRequest{Filter: spec.proto(), OptionalLimit: limit})
	if err != nil {
		err = c.callError("rel delete", err)
		if strings.Contains(err.Error(), "nothing was deleted") {
			// The server speaks of optional_limit; here it is --limit.
			err = fmt.Errorf("%w\n(raise --limit, up to the server's maximum, or narrow the filter)", err)
		}
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%d relationship(s) deleted\nrevision: %s\n", resp.GetDeletedCount(), resp.GetDeletedAt().GetToken())
	return nil
}
