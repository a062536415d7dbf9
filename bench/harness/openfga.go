package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	openfgav1 "github.com/openfga/api/proto/openfga/v1"
	"github.com/openfga/language/pkg/go/transformer"
	"github.com/openfga/openfga/pkg/encoder"
	fgaserver "github.com/openfga/openfga/pkg/server"
	serverconfig "github.com/openfga/openfga/pkg/server/config"
	"github.com/openfga/openfga/pkg/storage"
	"github.com/openfga/openfga/pkg/storage/memory"
	"github.com/openfga/openfga/pkg/storage/migrate"
	fgapostgres "github.com/openfga/openfga/pkg/storage/postgres"
	"github.com/openfga/openfga/pkg/storage/sqlcommon"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-authz/mandate/bench/workload"
	"github.com/mandate-authz/mandate/store/rel"
)

// fgaWriteBatch is the tuples per Write while loading: OpenFGA has no bulk
// import, and this is its --max-tuples-per-write default. (Writes of 1000
// were slower on PostgreSQL: each Write first looks its tuples up with one
// IN list, which grows slow with the table.)
const fgaWriteBatch = serverconfig.DefaultMaxTuplesPerWrite

// fgaChecksPerBatch is OpenFGA's --max-checks-per-batch-check for the
// harness: 100 (default 50) so a BatchCheck carries the same 100 items as
// the other engines' bulk checks.
const fgaChecksPerBatch = 100

// openFGA is OpenFGA v1.18.1's server (pkg/server) started in-process with
// `openfga run`'s defaults, registered on a gRPC server on loopback and
// called through its gRPC API.
type openFGA struct {
	ds      storage.OpenFGADatastore
	srv     *fgaserver.Server
	grpc    *grpc.Server
	conn    *grpc.ClientConn
	client  openfgav1.OpenFGAServiceClient
	store   string
	model   string
	cons    openfgav1.ConsistencyPreference
	stopCtx context.CancelFunc
}

// openOpenFGA starts OpenFGA on its memory datastore (uri empty) or on
// PostgreSQL at uri, running its migrations first.
func openOpenFGA(ctx context.Context, uri string, cons Consistency) (*openFGA, error) {
	def := serverconfig.DefaultConfig()
	var (
		ds        storage.OpenFGADatastore
		tokens    encoder.ContinuationTokenSerializer
		dsOptions = []sqlcommon.DatastoreOption{
			sqlcommon.WithMaxTuplesPerWrite(fgaWriteBatch),
			sqlcommon.WithMaxTypesPerAuthorizationModel(def.MaxTypesPerAuthorizationModel),
			sqlcommon.WithMaxOpenConns(def.Datastore.MaxOpenConns),
			sqlcommon.WithMinOpenConns(def.Datastore.MinOpenConns),
			sqlcommon.WithMaxIdleConns(def.Datastore.MaxIdleConns),
			sqlcommon.WithMinIdleConns(def.Datastore.MinIdleConns),
			sqlcommon.WithPingTimeout(def.Datastore.PingTimeout),
			sqlcommon.WithPingRetryMaxElapsedTime(def.Datastore.PingRetryMaxElapsedTime),
		}
	)
	if uri == "" {
		ds = memory.New(memory.WithMaxTuplesPerWrite(fgaWriteBatch), memory.WithMaxTypesPerAuthorizationModel(def.MaxTypesPerAuthorizationModel))
		tokens = encoder.NewStringContinuationTokenSerializer()
	} else {
		if err := migrate.RunMigrations(migrate.MigrationConfig{
			Engine: "postgres", URI: uri, Timeout: time.Minute, PingTimeout: def.Datastore.PingTimeout,
		}); err != nil {
			return nil, fmt.Errorf("openfga migrate: %w", err)
		}
		var err error
		ds, err = fgapostgres.New(uri, sqlcommon.NewConfig(dsOptions...))
		if err != nil {
			return nil, fmt.Errorf("openfga postgres datastore: %w", err)
		}
		tokens = sqlcommon.NewSQLContinuationTokenSerializer()
	}
	srvCtx, stop := context.WithCancel(context.Background())
	srv, err := fgaserver.NewServerWithOpts(
		fgaserver.WithDatastore(ds),
		fgaserver.WithContinuationTokenSerializer(tokens),
		fgaserver.WithAuthorizationModelCacheSize(def.Datastore.MaxCacheSize),
		fgaserver.WithTypesystemCacheSize(def.Datastore.MaxTypesystemCacheSize),
		fgaserver.WithResolveNodeLimit(def.ResolveNodeLimit),
		fgaserver.WithResolveNodeBreadthLimit(def.ResolveNodeBreadthLimit),
		fgaserver.WithChangelogHorizonOffset(def.ChangelogHorizonOffset),
		fgaserver.WithReadChangesMaxPageSize(def.ReadChangesMaxPageSize),
		// Lookups list every result, as the other engines' do; the
		// measurement's own deadline bounds them.
		fgaserver.WithListObjectsDeadline(0),
		fgaserver.WithListObjectsMaxResults(0),
		fgaserver.WithListObjectsPipelineEnabled(def.ListObjectsPipelineEnabled),
		fgaserver.WithMaxConcurrentReadsForListObjects(def.MaxConcurrentReadsForListObjects),
		fgaserver.WithMaxConcurrentReadsForCheck(def.MaxConcurrentReadsForCheck),
		fgaserver.WithCacheControllerEnabled(def.CacheController.Enabled),
		fgaserver.WithCacheControllerTTL(def.CacheController.TTL),
		fgaserver.WithCheckCacheLimit(def.CheckCache.Limit),
		fgaserver.WithCheckIteratorCacheEnabled(def.CheckIteratorCache.Enabled),
		fgaserver.WithCheckIteratorCacheMaxResults(def.CheckIteratorCache.MaxResults),
		fgaserver.WithCheckIteratorCacheTTL(def.CheckIteratorCache.TTL),
		fgaserver.WithCheckQueryCacheEnabled(def.CheckQueryCache.Enabled),
		fgaserver.WithCheckQueryCacheTTL(def.CheckQueryCache.TTL),
		fgaserver.WithMaxAuthorizationModelSizeInBytes(def.MaxAuthorizationModelSizeInBytes),
		fgaserver.WithDispatchThrottlingCheckResolverEnabled(def.CheckDispatchThrottling.Enabled),
		fgaserver.WithDispatchThrottlingCheckResolverFrequency(def.CheckDispatchThrottling.Frequency),
		fgaserver.WithDispatchThrottlingCheckResolverThreshold(def.CheckDispatchThrottling.Threshold),
		fgaserver.WithDispatchThrottlingCheckResolverMaxThreshold(def.CheckDispatchThrottling.MaxThreshold),
		fgaserver.WithListObjectsDispatchThrottlingEnabled(def.ListObjectsDispatchThrottling.Enabled),
		fgaserver.WithListObjectsDispatchThrottlingFrequency(def.ListObjectsDispatchThrottling.Frequency),
		fgaserver.WithListObjectsDispatchThrottlingThreshold(def.ListObjectsDispatchThrottling.Threshold),
		fgaserver.WithListObjectsDispatchThrottlingMaxThreshold(def.ListObjectsDispatchThrottling.MaxThreshold),
		fgaserver.WithListObjectsIteratorCacheEnabled(def.ListObjectsIteratorCache.Enabled),
		fgaserver.WithListObjectsIteratorCacheMaxResults(def.ListObjectsIteratorCache.MaxResults),
		fgaserver.WithListObjectsIteratorCacheTTL(def.ListObjectsIteratorCache.TTL),
		fgaserver.WithCacheTTLJitterPercentage(def.CacheTTLJitterPercentage),
		fgaserver.WithMaxChecksPerBatchCheck(fgaChecksPerBatch),
		fgaserver.WithMaxConcurrentChecksPerBatchCheck(def.MaxConcurrentChecksPerBatchCheck),
		fgaserver.WithSharedIteratorEnabled(def.SharedIterator.Enabled),
		fgaserver.WithSharedIteratorLimit(def.SharedIterator.Limit),
		fgaserver.WithSharedIteratorTTL(def.RequestTimeout+2*time.Second),
		fgaserver.WithExperimentals(def.Experimentals...),
		fgaserver.WithContext(srvCtx),
	)
	if err != nil {
		stop()
		ds.Close()
		return nil, fmt.Errorf("starting openfga: %w", err)
	}
	f := &openFGA{ds: ds, srv: srv, stopCtx: stop, cons: openfgav1.ConsistencyPreference_MINIMIZE_LATENCY}
	if cons == FullyConsistent {
		f.cons = openfgav1.ConsistencyPreference_HIGHER_CONSISTENCY
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Close()
		return nil, err
	}
	f.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(def.GRPC.MaxRecvMsgBytes))
	openfgav1.RegisterOpenFGAServiceServer(f.grpc, srv)
	go f.grpc.Serve(lis)
	f.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		f.Close()
		return nil, err
	}
	f.client = openfgav1.NewOpenFGAServiceClient(f.conn)
	return f, nil
}

func fgaUser(s rel.Subject) string {
	u := s.Type + ":" + s.ID
	if s.Relation != "" {
		u += "#" + s.Relation
	}
	return u
}

func (f *openFGA) Load(ctx context.Context, w *workload.Workload) error {
	st, err := f.client.CreateStore(ctx, &openfgav1.CreateStoreRequest{Name: "mandate-bench"})
	if err != nil {
		return fmt.Errorf("creating the store: %w", err)
	}
	f.store = st.GetId()
	model, err := transformer.TransformDSLToProto(workload.OpenFGAModel)
	if err != nil {
		return fmt.Errorf("parsing the model: %w", err)
	}
	m, err := f.client.WriteAuthorizationModel(ctx, &openfgav1.WriteAuthorizationModelRequest{
		StoreId: f.store, TypeDefinitions: model.GetTypeDefinitions(), SchemaVersion: model.GetSchemaVersion(), Conditions: model.GetConditions(),
	})
	if err != nil {
		return fmt.Errorf("writing the model: %w", err)
	}
	f.model = m.GetAuthorizationModelId()
	// Eight writers keep PostgreSQL busy; the memory datastore takes one
	// lock per write anyway.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	var written atomic.Int64
	for _, c := range chunks(len(w.Rels), fgaWriteBatch) {
		g.Go(func() error {
			keys := make([]*openfgav1.TupleKey, 0, c[1]-c[0])
			for _, r := range w.Rels[c[0]:c[1]] {
				keys = append(keys, &openfgav1.TupleKey{Object: r.Resource.String(), Relation: r.Relation, User: fgaUser(r.Subject)})
			}
			if _, err := f.client.Write(gctx, &openfgav1.WriteRequest{
				StoreId: f.store, AuthorizationModelId: f.model, Writes: &openfgav1.WriteRequestWrites{TupleKeys: keys},
			}); err != nil {
				return fmt.Errorf("writing tuples %d-%d: %w", c[0], c[1], err)
			}
			written.Add(int64(c[1] - c[0]))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("%d of %d tuples written: %w", written.Load(), len(w.Rels), err)
	}
	return nil
}

func (f *openFGA) tupleKey(c workload.Check) *openfgav1.CheckRequestTupleKey {
	return &openfgav1.CheckRequestTupleKey{User: c.Subject.String(), Relation: workload.Permission, Object: c.Resource.String()}
}

func (f *openFGA) Check(ctx context.Context, c workload.Check) (bool, error) {
	resp, err := f.client.Check(ctx, &openfgav1.CheckRequest{
		StoreId: f.store, AuthorizationModelId: f.model, TupleKey: f.tupleKey(c), Consistency: f.cons,
	})
	if err != nil {
		return false, err
	}
	return resp.GetAllowed(), nil
}

func (f *openFGA) CheckBulk(ctx context.Context, cs []workload.Check) ([]bool, error) {
	req := &openfgav1.BatchCheckRequest{StoreId: f.store, AuthorizationModelId: f.model, Consistency: f.cons,
		Checks: make([]*openfgav1.BatchCheckItem, len(cs))}
	for i, c := range cs {
		req.Checks[i] = &openfgav1.BatchCheckItem{TupleKey: f.tupleKey(c), CorrelationId: itoa(i)}
	}
	resp, err := f.client.BatchCheck(ctx, req)
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(cs))
	for i := range cs {
		r, ok := resp.GetResult()[itoa(i)]
		if !ok {
			return nil, fmt.Errorf("item %d (%s): no answer", i, cs[i])
		}
		if e := r.GetError(); e != nil {
			return nil, fmt.Errorf("item %d (%s): %s", i, cs[i], e.GetMessage())
		}
		out[i] = r.GetAllowed()
	}
	return out, nil
}

func (f *openFGA) LookupResources(ctx context.Context, subject rel.Object, first func()) ([]string, error) {
	resp, err := f.client.ListObjects(ctx, &openfgav1.ListObjectsRequest{
		StoreId: f.store, AuthorizationModelId: f.model, Type: workload.DocumentType, Relation: workload.Permission,
		User: subject.String(), Consistency: f.cons,
	})
	if err != nil {
		return nil, err
	}
	// ListObjects answers in one message: its first result is its last.
	if len(resp.GetObjects()) > 0 && first != nil {
		first()
	}
	ids := make([]string, len(resp.GetObjects()))
	for i, o := range resp.GetObjects() {
		ids[i] = strings.TrimPrefix(o, workload.DocumentType+":")
	}
	return ids, nil
}

func (f *openFGA) Write(ctx context.Context, r rel.Relationship) error {
	_, err := f.client.Write(ctx, &openfgav1.WriteRequest{
		StoreId: f.store, AuthorizationModelId: f.model,
		Writes: &openfgav1.WriteRequestWrites{TupleKeys: []*openfgav1.TupleKey{{
			Object: r.Resource.String(), Relation: r.Relation, User: fgaUser(r.Subject),
		}}},
	})
	return err
}

func (f *openFGA) Close() error {
	var errs []error
	if f.conn != nil {
		errs = append(errs, f.conn.Close())
	}
	if f.grpc != nil {
		stopped := make(chan struct{})
		go func() { f.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			f.grpc.Stop()
		}
	}
	f.srv.Close() // closes the datastore too
	f.stopCtx()
	return errors.Join(errs...)
}
