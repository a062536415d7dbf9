// Command middleware runs the demo calendar MCP server with the Mandate
// gateway in the same process: mcpgateway.Middleware wraps the go-sdk's
// Streamable HTTP handler, so no proxy hop is needed.
//
//	go run ./examples/mcp/middleware --issuer http://127.0.0.1:8082 --mandate 127.0.0.1:50051 --mandate-key devkey
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-authz/mandate/examples/mcp/calendar"
	"github.com/mandate-authz/mandate/mcpgateway"
)

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func main() {
	listen := flag.String("listen", "127.0.0.1:8091", "where the protected MCP server listens (endpoint /mcp)")
	issuer := flag.String("issuer", "http://127.0.0.1:8082", "OIDC issuer of the access tokens")
	mandate := flag.String("mandate", "127.0.0.1:50051", "Mandate's gRPC API (plaintext)")
	key := flag.String("mandate-key", "", "Mandate's preshared key")
	mappingFile := flag.String("mapping", "examples/mcp/mapping.yaml", "the mapping file")
	flag.Parse()

	text, err := os.ReadFile(*mappingFile)
	if err != nil {
		log.Fatal(err)
	}
	mapping, err := mcpgateway.ParseMapping(text)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient(*mandate, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(*key)))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	gw, err := mcpgateway.New(context.Background(), mcpgateway.Config{
		Resource: "http://" + *listen + "/mcp",
		Issuer:   *issuer,
		Mapping:  mapping,
		Mandate:  conn,
		Logger:   slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer gw.Close()

	srv := calendar.NewServer()
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: true})
	log.Printf("protected calendar MCP server on http://%s/mcp (metadata %s)", *listen, gw.MetadataURL())
	log.Fatal((&http.Server{Addr: *listen, Handler: gw.Middleware(mcpHandler), ReadHeaderTimeout: 10 * time.Second}).ListenAndServe())
}
