package server_test

import (
	"context"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/authzed/authzed-go/v1"
	"github.com/authzed/grpcutil"
	spicedatastore "github.com/authzed/spicedb/pkg/cmd/datastore"
	spiceserver "github.com/authzed/spicedb/pkg/cmd/server"
	spiceutil "github.com/authzed/spicedb/pkg/cmd/util"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The SpiceDB oracle: SpiceDB v1.56.1's own server (the `spicedb serve` of
// pkg/cmd/server, with its middleware, validation and consistency handling)
// over its in-memory datastore, served on an in-process listener. Tests
// drive it and Mandate with the same authzed-go client code. Only test
// files may import it: TestSpiceDBServerStaysOutOfTheBinary checks.

const spiceDBKey = "spicedb-oracle-key"

// startSpiceDB starts a fresh SpiceDB server and returns a client for it.
func startSpiceDB(t *testing.T) *authzed.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ds, err := spicedatastore.NewDatastore(ctx, spicedatastore.DefaultDatastoreConfig().ToOption(),
		spicedatastore.WithEngine(spicedatastore.MemoryEngine),
		// No quantization: minimize_latency reads see the latest write,
		// as they do in Mandate, so both can be compared in every mode.
		spicedatastore.WithRevisionQuantization(0))
	if err != nil {
		cancel()
		t.Fatalf("SpiceDB memory datastore: %v", err)
	}
	srv, lis, err := spiceserver.NewConfigWithOptionsAndDefaults(
		spiceserver.WithDatastore(ds),
		spiceserver.WithGRPCServer(spiceutil.GRPCServerConfig{Network: spiceutil.BufferedNetwork, Enabled: true}),
		spiceserver.WithPresharedSecureKey(spiceDBKey),
		spiceserver.WithHTTPGateway(spiceutil.HTTPServerConfig{HTTPEnabled: false}),
		spiceserver.WithMetricsAPI(spiceutil.HTTPServerConfig{HTTPEnabled: false}),
		spiceserver.WithDispatchServer(spiceutil.GRPCServerConfig{Enabled: false}),
		spiceserver.WithTelemetryEndpoint(""),
		spiceserver.WithSilentlyDisableTelemetry(true),
		spiceserver.WithEnableMemoryProtectionMiddleware(false),
		// A registry per server: several run in one test binary.
		spiceserver.WithOTel(*spiceserver.NewOTelConfigWithOptionsAndDefaults(spiceserver.WithPrometheusRegistry(prometheus.NewRegistry()))),
	).CompleteForTesting(ctx)
	if err != nil {
		cancel()
		ds.Close()
		t.Fatalf("SpiceDB server: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	client, err := authzed.NewClient("passthrough:///spicedb",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.GRPC.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpcutil.WithInsecureBearerToken(spiceDBKey),
	)
	if err != nil {
		cancel()
		t.Fatalf("SpiceDB client: %v", err)
	}
	t.Cleanup(func() {
		client.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("SpiceDB server did not stop within 10s")
		}
		ds.Close()
	})
	return client
}

// mandateClient returns an authzed-go client for a Mandate test server,
// configured as for SpiceDB: insecure, with a bearer preshared key.
func mandateClient(t *testing.T, ts *testServer, key string, opts ...grpc.DialOption) *authzed.Client {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	if key != "" {
		opts = append(opts, grpcutil.WithInsecureBearerToken(key))
	}
	client, err := authzed.NewClient(ts.srv.GRPCAddr().String(), opts...)
	if err != nil {
		t.Fatalf("authzed.NewClient: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// TestSpiceDBServerStaysOutOfTheBinary: the mandate binary serves the
// authzed API with authzed-go's generated types only; SpiceDB's server and
// datastore packages are linked by tests alone.
func TestSpiceDBServerStaysOutOfTheBinary(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-deps", "github.com/mandate-authz/mandate/cmd/mandate").Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/mandate: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/mandate-authz/mandate/server") {
		t.Fatalf("go list -deps ./cmd/mandate does not list the server package: %v", deps)
	}
	for _, dep := range deps {
		switch {
		case strings.HasPrefix(dep, "github.com/authzed/spicedb/pkg/cmd"),
			strings.HasPrefix(dep, "github.com/authzed/spicedb/internal/services"),
			strings.HasPrefix(dep, "github.com/authzed/spicedb/internal/datastore"),
			strings.HasPrefix(dep, "github.com/authzed/spicedb/internal/dispatch"),
			strings.HasPrefix(dep, "github.com/authzed/authzed-go/v1"),
			strings.HasPrefix(dep, "cloud.google.com/go/spanner"),
			dep == "github.com/authzed/spicedb/pkg/development":
			t.Errorf("the mandate binary links %s: only tests may link SpiceDB's server and client", dep)
		}
	}
	// The authzed API is served with authzed-go's generated types alone.
	imports, err := exec.Command("go", "list", "-e", "-f", `{{join .Imports " "}}`, "github.com/mandate-authz/mandate/server").Output()
	if err != nil {
		t.Fatalf("go list ./server: %v", err)
	}
	if !slices.Contains(strings.Fields(string(imports)), "github.com/authzed/authzed-go/proto/authzed/api/v1") {
		t.Error("the server package does not import authzed-go's API types: is the authzed.api.v1 API still served?")
	}
}
