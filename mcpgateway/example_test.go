package mcpgateway_test

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-authz/mandate/mcpgateway"
)

// An MCP server built with the go-sdk, protected in-process: every request
// reaches the go-sdk handler only once Mandate has allowed it.
// examples/mcp/middleware is the runnable version.
func ExampleGateway_Middleware() {
	text, err := os.ReadFile("mapping.yaml")
	if err != nil {
		log.Fatal(err)
	}
	mapping, err := mcpgateway.ParseMapping(text) // errors name their line
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient("127.0.0.1:50051", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer("devkey")))
	if err != nil {
		log.Fatal(err)
	}
	gw, err := mcpgateway.New(context.Background(), mcpgateway.Config{
		Resource: "https://mcp.example.com/mcp", // tokens must name it in aud
		Issuer:   "https://login.example.com",
		Mapping:  mapping,
		Mandate:  conn,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer gw.Close()

	server := mcp.NewServer(&mcp.Implementation{Name: "calendar", Version: "1.0.0"}, nil)
	// ... mcp.AddTool(server, ...)
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)
	log.Fatal(http.ListenAndServe("127.0.0.1:8091", gw.Middleware(handler)))
}
