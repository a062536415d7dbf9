package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/bench/workload"
	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/rel"
)

// presharedKey authenticates the harness to every server it starts.
const presharedKey = "mandate-bench-key"

// loadBatch is how many relationships one store write or import message
// carries.
const loadBatch = 10_000

// ---- in-process ----

// mandateInProcess is Mandate's engine called directly, following a memory
// store as the server does.
type mandateInProcess struct {
	st    *memory.Store
	eng   *engine.Engine
	stop  context.CancelFunc
	done  chan error
	fully bool
}

func openMandateInProcess(cons Consistency) (*mandateInProcess, error) {
	st := memory.New()
	eng := engine.New()
	ctx, stop := context.WithCancel(context.Background())
	m := &mandateInProcess{st: st, eng: eng, stop: stop, done: make(chan error, 1), fully: cons == FullyConsistent}
	go func() { m.done <- feed.Follow(ctx, eng, st, nil) }()
	return m, nil
}

func (m *mandateInProcess) Load(ctx context.Context, w *workload.Workload) error {
	if _, err := m.st.WriteSchema(ctx, workload.MandateSchema); err != nil {
		return fmt.Errorf("writing the schema: %w", err)
	}
	all := append(append([]rel.Relationship(nil), w.Rels...), w.AgentRels...)
	var rev store.Revision
	for _, c := range chunks(len(all), 50_000) {
		muts := make([]store.Mutation, 0, c[1]-c[0])
		for _, r := range all[c[0]:c[1]] {
			muts = append(muts, store.Mutation{Op: store.Create, Rel: r})
		}
		var err error
		if rev, err = m.st.Write(ctx, nil, muts); err != nil {
			return fmt.Errorf("writing relationships %d-%d: %w", c[0], c[1], err)
		}
	}
	return m.eng.WaitForRevision(ctx, rev)
}

// revision returns the revision to check at: the engine's head, after
// catching up with the store when fully consistent.
func (m *mandateInProcess) revision(ctx context.Context) (store.Revision, error) {
	if !m.fully {
		return 0, nil
	}
	head, err := m.st.Head(ctx)
	if err != nil {
		return 0, err
	}
	return 0, m.eng.WaitForRevision(ctx, head)
}

func decided(d engine.Decision) (bool, error) {
	switch d {
	case engine.Allowed:
		return true, nil
	case engine.Denied:
		return false, nil
	}
	return false, fmt.Errorf("decision %s: the workload has no caveat context to miss", d)
}

func checkRequest(c workload.Check) engine.CheckRequest {
	return engine.CheckRequest{
		Resource: c.Resource, Permission: workload.Permission,
		Subject: rel.Subject{Type: c.Subject.Type, ID: c.Subject.ID},
	}
}

func (m *mandateInProcess) Check(ctx context.Context, c workload.Check) (bool, error) {
	rev, err := m.revision(ctx)
	if err != nil {
		return false, err
	}
	req := checkRequest(c)
	req.Revision = rev
	res, err := m.eng.Check(ctx, req)
	if err != nil {
		return false, err
	}
	return decided(res.Decision)
}

func (m *mandateInProcess) CheckAgent(ctx context.Context, c workload.AgentCheck) (bool, error) {
	return m.Check(ctx, c.Check)
}

func (m *mandateInProcess) CheckBulk(ctx context.Context, cs []workload.Check) ([]bool, error) {
	if _, err := m.revision(ctx); err != nil {
		return nil, err
	}
	reqs := make([]engine.CheckRequest, len(cs))
	for i, c := range cs {
		reqs[i] = checkRequest(c)
	}
	res, errs := m.eng.CheckBulk(ctx, reqs)
	out := make([]bool, len(cs))
	for i := range res {
		if errs[i] != nil {
			return nil, fmt.Errorf("item %d (%s): %w", i, cs[i], errs[i])
		}
		ok, err := decided(res[i].Decision)
		if err != nil {
			return nil, fmt.Errorf("item %d (%s): %w", i, cs[i], err)
		}
		out[i] = ok
	}
	return out, nil
}

// LookupResources streams, as the server does, so that its first result
// is timed the same way.
func (m *mandateInProcess) LookupResources(ctx context.Context, subject rel.Object, first func()) ([]string, error) {
	if _, err := m.revision(ctx); err != nil {
		return nil, err
	}
	var ids []string
	err := m.eng.StreamLookupResources(ctx, engine.LookupResourcesRequest{
		ResourceType: workload.DocumentType, Permission: workload.Permission,
		Subject: rel.Subject{Type: subject.Type, ID: subject.ID},
	}, func(_ store.Revision, batch []engine.LookupResult) error {
		if len(ids) == 0 && len(batch) > 0 && first != nil {
			first()
		}
		for _, r := range batch {
			if r.Decision != engine.Allowed {
				return fmt.Errorf("lookup result %s is %s", r.ID, r.Decision)
			}
			ids = append(ids, r.ID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

func (m *mandateInProcess) Write(ctx context.Context, r rel.Relationship) error {
	_, err := m.st.Write(ctx, nil, []store.Mutation{{Op: store.Touch, Rel: r}})
	return err
}

func (m *mandateInProcess) Close() error {
	m.stop()
	err := <-m.done
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return errors.Join(err, m.st.Close())
}

// ---- gRPC ----

// mandateStore opens the store the gRPC server serves: "memory",
// "embedded" (in a temporary directory) or "postgres" (in database uri).
func mandateStore(ctx context.Context, kind, uri string) (store.Store, func(), error) {
	switch kind {
	case "memory":
		return memory.New(), func() {}, nil
	case "embedded":
		dir, err := os.MkdirTemp("", "mandate-bench-embedded-")
		if err != nil {
			return nil, nil, err
		}
		st, err := embedded.Open(ctx, dir, embedded.Options{})
		if err != nil {
			os.RemoveAll(dir)
			return nil, nil, fmt.Errorf("opening the embedded store in %s: %w", dir, err)
		}
		return st, func() { os.RemoveAll(dir) }, nil
	case "postgres":
		st, err := postgres.Open(ctx, uri, postgres.Options{Migrate: true})
		if err != nil {
			return nil, nil, fmt.Errorf("opening the postgres store: %w", err)
		}
		return st, func() {}, nil
	}
	return nil, nil, fmt.Errorf("mandate store %q: expected memory, embedded or postgres", kind)
}

// bearer attaches the preshared key to every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

// mandateGRPC is `mandate serve` started in-process on loopback and called
// through its gRPC API.
type mandateGRPC struct {
	st      store.Store
	cleanup func()
	stop    context.CancelFunc
	done    chan error
	conn    *grpc.ClientConn
	perm    pb.PermissionServiceClient
	rels    pb.RelationshipServiceClient
	schema  pb.SchemaServiceClient
	cons    *pb.Consistency
}

func openMandateGRPC(ctx context.Context, storeKind, uri string, cons Consistency) (*mandateGRPC, error) {
	st, cleanup, err := mandateStore(ctx, storeKind, uri)
	if err != nil {
		return nil, err
	}
	cfg := server.Config{
		GRPCAddr:            "127.0.0.1:0",
		PresharedKeys:       []string{presharedKey},
		ShutdownGracePeriod: 5 * time.Second,
	}
	// As `mandate serve` names a durable store, so that replicas over one
	// database honour each other's revision tokens.
	if id, ok := st.(interface{ ID() string }); ok {
		cfg.StoreName = storeKind + ":" + id.ID()
	}
	srv, err := server.New(st, engine.New(), cfg)
	if err != nil {
		st.Close()
		cleanup()
		return nil, fmt.Errorf("starting the server: %w", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	m := &mandateGRPC{st: st, cleanup: cleanup, stop: stop, done: make(chan error, 1)}
	go func() { m.done <- srv.Run(runCtx) }()
	for !srv.Ready() {
		select {
		case err := <-m.done:
			m.done <- err
			m.Close()
			return nil, fmt.Errorf("the server stopped before it was ready: %w", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	m.conn, err = grpc.NewClient(srv.GRPCAddr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(presharedKey)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		m.Close()
		return nil, err
	}
	m.perm = pb.NewPermissionServiceClient(m.conn)
	m.rels = pb.NewRelationshipServiceClient(m.conn)
	m.schema = pb.NewSchemaServiceClient(m.conn)
	m.cons = &pb.Consistency{Requirement: &pb.Consistency_MinimizeLatency{MinimizeLatency: true}}
	if cons == FullyConsistent {
		m.cons = &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}}
	}
	return m, nil
}

func pbRelationship(r rel.Relationship) (*pb.Relationship, error) {
	out := &pb.Relationship{
		Resource: &pb.ObjectReference{ObjectType: r.Resource.Type, ObjectId: r.Resource.ID},
		Relation: r.Relation,
		Subject: &pb.SubjectReference{
			Object:           &pb.ObjectReference{ObjectType: r.Subject.Type, ObjectId: r.Subject.ID},
			OptionalRelation: r.Subject.Relation,
		},
	}
	if r.Caveat != nil {
		ctx, err := structpb.NewStruct(r.Caveat.Context)
		if err != nil {
			return nil, fmt.Errorf("relationship %s: caveat context: %w", r, err)
		}
		out.OptionalCaveat = &pb.ContextualizedCaveat{CaveatName: r.Caveat.Name, Context: ctx}
	}
	return out, nil
}

func (m *mandateGRPC) Load(ctx context.Context, w *workload.Workload) error {
	if _, err := m.schema.WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: workload.MandateSchema}); err != nil {
		return fmt.Errorf("writing the schema: %w", err)
	}
	all := append(append([]rel.Relationship(nil), w.Rels...), w.AgentRels...)
	stream, err := m.rels.ImportRelationships(ctx)
	if err != nil {
		return err
	}
	for _, c := range chunks(len(all), loadBatch) {
		msg := &pb.ImportRelationshipsRequest{Relationships: make([]*pb.Relationship, 0, c[1]-c[0])}
		for _, r := range all[c[0]:c[1]] {
			p, err := pbRelationship(r)
			if err != nil {
				return err
			}
			msg.Relationships = append(msg.Relationships, p)
		}
		if err := stream.Send(msg); err != nil {
			if err == io.EOF {
				_, err = stream.CloseAndRecv()
			}
			return fmt.Errorf("importing relationships %d-%d: %w", c[0], c[1], err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("importing relationships: %w", err)
	}
	if int(resp.GetNumLoaded()) != len(all) {
		return fmt.Errorf("import loaded %d relationships, sent %d", resp.GetNumLoaded(), len(all))
	}
	// Wait until the engine has applied the import.
	c := w.Checks[0]
	_, err = m.perm.Check(ctx, &pb.CheckRequest{
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: resp.GetWrittenAt()}},
		Resource:    &pb.ObjectReference{ObjectType: c.Resource.Type, ObjectId: c.Resource.ID},
		Permission:  workload.Permission,
		Subject:     &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: c.Subject.Type, ObjectId: c.Subject.ID}},
	})
	return err
}

func pbDecided(d pb.Decision) (bool, error) {
	switch d {
	case pb.Decision_DECISION_ALLOWED:
		return true, nil
	case pb.Decision_DECISION_DENIED:
		return false, nil
	}
	return false, fmt.Errorf("decision %s: the workload has no caveat context to miss", d)
}

func (m *mandateGRPC) Check(ctx context.Context, c workload.Check) (bool, error) {
	resp, err := m.perm.Check(ctx, &pb.CheckRequest{
		Consistency: m.cons,
		Resource:    &pb.ObjectReference{ObjectType: c.Resource.Type, ObjectId: c.Resource.ID},
		Permission:  workload.Permission,
		Subject:     &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: c.Subject.Type, ObjectId: c.Subject.ID}},
	})
	if err != nil {
		return false, err
	}
	return pbDecided(resp.GetDecision())
}

func (m *mandateGRPC) CheckAgent(ctx context.Context, c workload.AgentCheck) (bool, error) {
	return m.Check(ctx, c.Check)
}

func (m *mandateGRPC) CheckBulk(ctx context.Context, cs []workload.Check) ([]bool, error) {
	req := &pb.CheckBulkRequest{Consistency: m.cons, Items: make([]*pb.CheckBulkRequestItem, len(cs))}
	for i, c := range cs {
		req.Items[i] = &pb.CheckBulkRequestItem{
			Resource:   &pb.ObjectReference{ObjectType: c.Resource.Type, ObjectId: c.Resource.ID},
			Permission: workload.Permission,
			Subject:    &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: c.Subject.Type, ObjectId: c.Subject.ID}},
		}
	}
	resp, err := m.perm.CheckBulk(ctx, req)
	if err != nil {
		return nil, err
	}
	return bulkAnswers(cs, resp.GetPairs(), func(p *pb.CheckBulkPair) (bool, error) {
		if e := p.GetError(); e != nil {
			return false, errors.New(e.GetMessage())
		}
		return pbDecided(p.GetItem().GetDecision())
	})
}

// bulkAnswers turns a bulk check's pairs into one answer per item.
func bulkAnswers[P any](cs []workload.Check, pairs []P, answer func(P) (bool, error)) ([]bool, error) {
	if len(pairs) != len(cs) {
		return nil, fmt.Errorf("%d answers to %d items", len(pairs), len(cs))
	}
	out := make([]bool, len(cs))
	for i, p := range pairs {
		ok, err := answer(p)
		if err != nil {
			return nil, fmt.Errorf("item %d (%s): %w", i, cs[i], err)
		}
		out[i] = ok
	}
	return out, nil
}

// LookupResources asks for batched responses (batch_results): a few
// messages per answer rather than one per result.
func (m *mandateGRPC) LookupResources(ctx context.Context, subject rel.Object, first func()) ([]string, error) {
	stream, err := m.perm.LookupResources(ctx, &pb.LookupResourcesRequest{
		Consistency:        m.cons,
		ResourceObjectType: workload.DocumentType,
		Permission:         workload.Permission,
		Subject:            &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: subject.Type, ObjectId: subject.ID}},
		BatchResults:       true,
	})
	if err != nil {
		return nil, err
	}
	var ids []string
	err = drain(stream.Recv, func(resp *pb.LookupResourcesResponse) error {
		if len(ids) == 0 && len(resp.GetResults()) > 0 && first != nil {
			first()
		}
		for _, r := range resp.GetResults() {
			if r.GetDecision() != pb.Decision_DECISION_ALLOWED {
				return fmt.Errorf("lookup result %s is %s", r.GetResourceObjectId(), r.GetDecision())
			}
			ids = append(ids, r.GetResourceObjectId())
		}
		return nil
	})
	return ids, err
}

// drain calls each for every message of a server stream until it ends.
func drain[T any](recv func() (T, error), each func(T) error) error {
	for {
		msg, err := recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := each(msg); err != nil {
			return err
		}
	}
}

func (m *mandateGRPC) Write(ctx context.Context, r rel.Relationship) error {
	p, err := pbRelationship(r)
	if err != nil {
		return err
	}
	_, err = m.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{
		Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: p,
	}}})
	return err
}

func (m *mandateGRPC) Close() error {
	var errs []error
	if m.conn != nil {
		errs = append(errs, m.conn.Close())
	}
	m.stop()
	if err := <-m.done; err != nil && !errors.Is(err, context.Canceled) {
		errs = append(errs, err)
	}
	errs = append(errs, m.st.Close())
	m.cleanup()
	return errors.Join(errs...)
}
