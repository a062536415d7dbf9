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
		newRelUpdateCommand(o, "delete", pb.RelationshipUpdate_OPERATION_DELETE, "Delete relationships (missing ones are ignored)"),
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
