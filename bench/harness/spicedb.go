package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	spicedatastore "github.com/authzed/spicedb/pkg/cmd/datastore"
	spiceserver "github.com/authzed/spicedb/pkg/cmd/server"
	spiceutil "github.com/authzed/spicedb/pkg/cmd/util"
	"github.com/authzed/spicedb/pkg/datastore/migration"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/bench/workload"
	"github.com/mandate-authz/mandate/store/rel"
)

// spiceDB is SpiceDB v1.56.1's server started in-process with `spicedb
// serve`'s own flag defaults, called through its v1 gRPC API on loopback.
type spiceDB struct {
	stop context.CancelFunc
	done chan error
	conn *grpc.ClientConn
	perm v1.PermissionsServiceClient
	sch  v1.SchemaServiceClient
	cons *v1.Consistency
}

// freeLoopbackAddr picks a free port: SpiceDB's config takes an address,
// not a listener, and does not report the port it bound for ":0".
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// openSpiceDB starts SpiceDB on the memory datastore (uri empty) or on
// PostgreSQL at uri, running its migrations first.
func openSpiceDB(ctx context.Context, uri string, cons Consistency) (*spiceDB, error) {
	engine := "memory"
	if uri != "" {
		engine = "postgres"
		if err := migration.Run(ctx, &migration.Config{
			DatastoreEngine: engine, DatastoreURI: uri, Timeout: 10 * time.Minute, BatchSize: 1000,
		}, "head"); err != nil {
			return nil, fmt.Errorf("spicedb migrate head: %w", err)
		}
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	cfg, err := spiceConfig(engine, uri, addr)
	if err != nil {
		return nil, err
	}
	srv, err := cfg.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting spicedb: %w", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	s := &spiceDB{stop: stop, done: make(chan error, 1)}
	go func() { s.done <- srv.Run(runCtx) }()
	s.conn, err = srv.NewClient(
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(presharedKey)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		s.Close()
		return nil, err
	}
	s.perm = v1.NewPermissionsServiceClient(s.conn)
	s.sch = v1.NewSchemaServiceClient(s.conn)
	s.cons = &v1.Consistency{Requirement: &v1.Consistency_MinimizeLatency{MinimizeLatency: true}}
	if cons == FullyConsistent {
		s.cons = &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}
	}
	// Wait for the server to answer.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := s.sch.ReadSchema(ctx, &v1.ReadSchemaRequest{})
		if err == nil || time.Now().After(deadline) || errors.Is(ctx.Err(), context.Canceled) {
			break
		}
		if status.Code(err) == codes.NotFound {
			break // serving, no schema yet
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s, nil
}

// spiceConfig is `spicedb serve`'s configuration with its flag defaults
// (the datastore's through SpiceDB's own flag registration, the caches' as
// pkg/cmd/serve.go sets them), serving gRPC on addr without the HTTP
// gateway, metrics endpoint, cluster dispatch or telemetry.
func spiceConfig(engine, uri, addr string) (*spiceserver.Config, error) {
	cfg := spiceserver.NewConfigWithOptionsAndDefaults()
	fs := pflag.NewFlagSet("spicedb serve", pflag.ContinueOnError)
	if err := spicedatastore.RegisterDatastoreFlags(fs, &cfg.DatastoreConfig); err != nil {
		return nil, err
	}
	caches := []struct {
		prefix string
		cfg    *spiceserver.CacheConfig
		def    spiceserver.CacheConfig
	}{
		{"ns-cache", &cfg.NamespaceCacheConfig, spiceserver.CacheConfig{Name: "namespace", Enabled: true, Metrics: true, MaxCost: "32MiB"}},
		{"dispatch-cache", &cfg.DispatchCacheConfig, spiceserver.CacheConfig{Name: "dispatch", Enabled: true, Metrics: true, MaxCost: "30%"}},
		{"dispatch-cluster-cache", &cfg.ClusterDispatchCacheConfig, spiceserver.CacheConfig{Name: "cluster_dispatch", Enabled: true, Metrics: true, MaxCost: "70%"}},
		{"lookup-resources-chunk-cache", &cfg.LR3ResourceChunkCacheConfig, spiceserver.CacheConfig{Name: "lr3_chunk", Enabled: true, MaxCost: "50MiB"}},
		{"stored-schema-cache", &cfg.StoredSchemaCacheConfig, spiceserver.CacheConfig{Name: "stored_schema", Enabled: true, Metrics: true, MaxCost: "32MiB"}},
	}
	for _, c := range caches {
		if err := spiceserver.RegisterCacheFlags(fs, c.prefix, c.prefix, c.cfg, &c.def); err != nil {
			return nil, err
		}
	}
	args := []string{"--datastore-engine=" + engine}
	if uri != "" {
		args = append(args, "--datastore-conn-uri="+uri)
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("spicedb datastore flags: %w", err)
	}
	cfg.GRPCServer = spiceutil.GRPCServerConfig{Address: addr, Network: "tcp", Enabled: true, MaxConnAge: 30 * time.Second}
	cfg.PresharedSecureKey = []string{presharedKey}
	cfg.HTTPGateway.HTTPEnabled = false
	cfg.MetricsAPI.HTTPEnabled = false
	cfg.DispatchServer.Enabled = false
	cfg.DispatchClientMetricsEnabled = true
	cfg.DispatchClusterMetricsEnabled = true
	cfg.TelemetryEndpoint = ""
	cfg.SilentlyDisableTelemetry = true
	return cfg, nil
}

func spiceObject(o rel.Object) *v1.ObjectReference {
	return &v1.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}
}

func spiceSubject(o rel.Object) *v1.SubjectReference {
	return &v1.SubjectReference{Object: spiceObject(o)}
}

func spiceRelationship(r rel.Relationship) (*v1.Relationship, error) {
	out := &v1.Relationship{
		Resource: spiceObject(r.Resource),
		Relation: r.Relation,
		Subject: &v1.SubjectReference{
			Object: &v1.ObjectReference{ObjectType: r.Subject.Type, ObjectId: r.Subject.ID}, OptionalRelation: r.Subject.Relation,
		},
	}
	if r.Caveat != nil {
		ctx, err := structpb.NewStruct(r.Caveat.Context)
		if err != nil {
			return nil, err
		}
		out.OptionalCaveat = &v1.ContextualizedCaveat{CaveatName: r.Caveat.Name, Context: ctx}
	}
	return out, nil
}

// importChunk bounds one ImportBulkRelationships stream, which SpiceDB
// writes in one transaction.
const importChunk = 50_000

func (s *spiceDB) Load(ctx context.Context, w *workload.Workload) error {
	if _, err := s.sch.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: workload.SpiceDBSchema}); err != nil {
		return fmt.Errorf("writing the schema: %w", err)
	}
	for _, c := range chunks(len(w.Rels), importChunk) {
		stream, err := s.perm.ImportBulkRelationships(ctx)
		if err != nil {
			return err
		}
		for _, b := range chunks(c[1]-c[0], 1000) {
			msg := &v1.ImportBulkRelationshipsRequest{}
			for _, r := range w.Rels[c[0]+b[0] : c[0]+b[1]] {
				p, err := spiceRelationship(r)
				if err != nil {
					return err
				}
				msg.Relationships = append(msg.Relationships, p)
			}
			if err := stream.Send(msg); err != nil {
				if err == io.EOF {
					_, err = stream.CloseAndRecv()
				}
				return fmt.Errorf("importing relationships %d-%d: %w", c[0]+b[0], c[0]+b[1], err)
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return fmt.Errorf("importing relationships %d-%d: %w", c[0], c[1], err)
		}
		if int(resp.GetNumLoaded()) != c[1]-c[0] {
			return fmt.Errorf("import loaded %d relationships, sent %d", resp.GetNumLoaded(), c[1]-c[0])
		}
	}
	// minimize_latency reads a quantized revision (up to 5s old): wait until
	// it shows the last relationship loaded, the owner of the last document.
	last := workload.Check{Resource: workload.Document(w.Config.Documents - 1)}
	for _, r := range w.Rels {
		if r.Resource == last.Resource && r.Relation == "owner" {
			last.Subject = r.Subject.Object()
		}
	}
	return waitUntilAllowed(ctx, s, last)
}

// waitUntilAllowed polls a check known to be allowed until the engine's
// reads include it.
func waitUntilAllowed(ctx context.Context, e Engine, c workload.Check) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok, err := e.Check(ctx, c)
		if err != nil {
			return fmt.Errorf("checking %s after loading: %w", c, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still denied 2 minutes after loading", c)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *spiceDB) Check(ctx context.Context, c workload.Check) (bool, error) {
	resp, err := s.perm.CheckPermission(ctx, &v1.CheckPermissionRequest{
		Consistency: s.cons, Resource: spiceObject(c.Resource), Permission: workload.Permission, Subject: spiceSubject(c.Subject),
	})
	if err != nil {
		return false, err
	}
	return spicePermissionship(resp.GetPermissionship())
}

func spicePermissionship(p v1.CheckPermissionResponse_Permissionship) (bool, error) {
	switch p {
	case v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION:
		return true, nil
	case v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION:
		return false, nil
	}
	return false, fmt.Errorf("permissionship %s", p)
}

func (s *spiceDB) CheckBulk(ctx context.Context, cs []workload.Check) ([]bool, error) {
	req := &v1.CheckBulkPermissionsRequest{Consistency: s.cons, Items: make([]*v1.CheckBulkPermissionsRequestItem, len(cs))}
	for i, c := range cs {
		req.Items[i] = &v1.CheckBulkPermissionsRequestItem{
			Resource: spiceObject(c.Resource), Permission: workload.Permission, Subject: spiceSubject(c.Subject),
		}
	}
	resp, err := s.perm.CheckBulkPermissions(ctx, req)
	if err != nil {
		return nil, err
	}
	return bulkAnswers(cs, resp.GetPairs(), func(p *v1.CheckBulkPermissionsPair) (bool, error) {
		if e := p.GetError(); e != nil {
			return false, errors.New(e.GetMessage())
		}
		return spicePermissionship(p.GetItem().GetPermissionship())
	})
}

func (s *spiceDB) LookupResources(ctx context.Context, subject rel.Object, first func()) ([]string, error) {
	stream, err := s.perm.LookupResources(ctx, &v1.LookupResourcesRequest{
		Consistency: s.cons, ResourceObjectType: workload.DocumentType, Permission: workload.Permission, Subject: spiceSubject(subject),
	})
	if err != nil {
		return nil, err
	}
	var ids []string
	err = drain(stream.Recv, func(resp *v1.LookupResourcesResponse) error {
		if resp.GetPermissionship() != v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_HAS_PERMISSION {
			return fmt.Errorf("lookup result %s is %s", resp.GetResourceObjectId(), resp.GetPermissionship())
		}
		if len(ids) == 0 && first != nil {
			first()
		}
		ids = append(ids, resp.GetResourceObjectId())
		return nil
	})
	return ids, err
}

func (s *spiceDB) Write(ctx context.Context, r rel.Relationship) error {
	p, err := spiceRelationship(r)
	if err != nil {
		return err
	}
	_, err = s.perm.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: []*v1.RelationshipUpdate{{
		Operation: v1.RelationshipUpdate_OPERATION_TOUCH, Relationship: p,
	}}})
	return err
}

func (s *spiceDB) Close() error {
	var errs []error
	if s.conn != nil {
		errs = append(errs, s.conn.Close())
	}
	s.stop()
	select {
	case err := <-s.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("spicedb: %w", err))
		}
	case <-time.After(30 * time.Second):
		errs = append(errs, errors.New("spicedb did not stop within 30s"))
	}
	return errors.Join(errs...)
}

// itoa is strconv.Itoa, short for correlation IDs.
func itoa(i int) string { return strconv.Itoa(i) }
