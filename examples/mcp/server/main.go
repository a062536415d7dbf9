// Command server runs the demo calendar MCP server (examples/mcp/calendar)
// for the gateway's quick start, and, for the demo only, a loopback OIDC
// issuer that mints tokens for anyone who asks (oidctest): never expose it.
//
//	go run ./examples/mcp/server --seed-mandate 127.0.0.1:50051 --mandate-key devkey
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-authz/mandate/examples/mcp/calendar"
	"github.com/mandate-authz/mandate/mcpgateway/oidctest"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "where the MCP server listens (endpoint /mcp)")
	issuerListen := flag.String("issuer-listen", "127.0.0.1:8082", "where the demo OIDC issuer listens (empty: none)")
	stateful := flag.Bool("stateful", false, "keep sessions (2025-11-25 only); the default stateless server speaks both eras")
	seed := flag.String("seed-mandate", "", "write the demo schema and relationships to the Mandate gRPC API at this address (plaintext)")
	key := flag.String("mandate-key", "", "Mandate's preshared key, for --seed-mandate")
	flag.Parse()

	if *seed != "" {
		conn, err := grpc.NewClient(*seed, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(*key)))
		if err != nil {
			log.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = calendar.Seed(ctx, pb.NewSchemaServiceClient(conn), pb.NewRelationshipServiceClient(conn))
		cancel()
		conn.Close()
		if err != nil {
			log.Fatalf("seeding Mandate at %s: %v", *seed, err)
		}
		log.Printf("wrote the demo schema and %d relationships to Mandate at %s", len(calendar.Relationships), *seed)
	}
	if *issuerListen != "" {
		ln, err := net.Listen("tcp", *issuerListen)
		if err != nil {
			log.Fatal(err)
		}
		iss, err := oidctest.New("http://" + ln.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		go func() { log.Fatal(http.Serve(ln, iss.Handler())) }()
		log.Printf("demo issuer %s (tokens: %s/mint?sub=alice&client_id=helper&aud=...&scope=mcp)", iss.URL, iss.URL)
	}
	srv := calendar.NewServer()
	mux := http.NewServeMux()
	mux.Handle("/mcp", mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: !*stateful}))
	fmt.Printf("calendar MCP server on http://%s/mcp\n", *listen)
	log.Fatal((&http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe())
}
