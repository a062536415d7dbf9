package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/rel"
)

// defaultEndpoint is where `mandate serve` listens by default (--grpc-addr
// ":50051"), reached over loopback.
const defaultEndpoint = "127.0.0.1:50051"

// clientFlags are the connection flags every client command shares. Each is
// also read from MANDATE_<FLAG> (MANDATE_ENDPOINT, MANDATE_TOKEN,
// MANDATE_INSECURE, MANDATE_TLS_CA_PATH, MANDATE_TLS_CERT_PATH,
// MANDATE_TLS_KEY_PATH, MANDATE_TLS_SERVER_NAME, MANDATE_TIMEOUT) when not
// given.
var clientFlags = []string{"endpoint", "token", "insecure", "tls-ca-path", "tls-cert-path", "tls-key-path", "tls-server-name", "timeout"}

// clientOptions configure the connection to a Mandate server.
type clientOptions struct {
	endpoint string
	token    string
	insecure bool
	caPath   string
	// certPath and keyPath are the client certificate for a server that
	// verifies clients (serve --grpc-tls-client-ca-path).
	certPath, keyPath string
	serverName        string
	timeout           time.Duration
}

// addClientFlags registers the connection flags on a command tree's root
// (persistent, so `mandate schema read --token k` and `mandate schema
// --token k read` both work).
func addClientFlags(f *pflag.FlagSet, o *clientOptions) {
	f.StringVar(&o.endpoint, "endpoint", defaultEndpoint, "host:port of the server's gRPC API")
	f.StringVar(&o.token, "token", "", "preshared key sent as \"authorization: Bearer <key>\" (prefer MANDATE_TOKEN: the command line is visible to other users)")
	f.BoolVar(&o.insecure, "insecure", false, "connect in plaintext, for a server without --grpc-tls-cert-path (the serve default)")
	f.StringVar(&o.caPath, "tls-ca-path", "", "PEM file of the CA that signed the server's certificate (default: the system roots)")
	f.StringVar(&o.certPath, "tls-cert-path", "", "client certificate (PEM) presented to a server that verifies clients (serve --grpc-tls-client-ca-path); with --tls-key-path")
	f.StringVar(&o.keyPath, "tls-key-path", "", "key of --tls-cert-path")
	f.StringVar(&o.serverName, "tls-server-name", "", "name the server's certificate must carry (default the host of --endpoint)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "longest the command waits for the server")
}

// applyClientEnv fills the connection flags not given on the command line
// from the environment. Only these flags are read from it: a command's own
// flags (--context, ...) are not.
func applyClientEnv(cmd *cobra.Command, lookup func(string) (string, bool)) error {
	for _, name := range clientFlags {
		f := cmd.Flags().Lookup(name)
		if f == nil || f.Changed {
			continue
		}
		env := envName(name)
		v, ok := lookup(env)
		if !ok || v == "" {
			continue
		}
		if err := cmd.Flags().Set(name, strings.TrimSpace(v)); err != nil {
			// Never echo the value: it may be the key.
			return fmt.Errorf("environment variable %s: invalid value for --%s: expected a %s", env, name, f.Value.Type())
		}
	}
	return nil
}

// bearerKey sends the preshared key with every call, as the server's
// authenticator expects.
type bearerKey struct{ key string }

func (b bearerKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

// RequireTransportSecurity is false so that --insecure works on loopback
// and in tests; the user opts into plaintext explicitly.
func (b bearerKey) RequireTransportSecurity() bool { return false }

// client is an open connection with the API's three services.
type client struct {
	conn   *grpc.ClientConn
	perm   pb.PermissionServiceClient
	rels   pb.RelationshipServiceClient
	schema pb.SchemaServiceClient
	opts   *clientOptions
}

// connect applies the environment to cmd's connection flags and opens a
// client. The returned context carries --timeout; call cancel and
// client.close when done.
func connect(cmd *cobra.Command, o *clientOptions) (*client, context.Context, context.CancelFunc, error) {
	if err := applyClientEnv(cmd, os.LookupEnv); err != nil {
		return nil, nil, nil, err
	}
	if strings.TrimSpace(o.endpoint) == "" {
		return nil, nil, nil, errors.New("--endpoint: expected host:port of the server's gRPC API")
	}
	if o.timeout <= 0 {
		return nil, nil, nil, fmt.Errorf("--timeout %v: expected a positive duration", o.timeout)
	}
	var creds credentials.TransportCredentials
	switch {
	case o.insecure && (o.caPath != "" || o.certPath != "" || o.keyPath != "" || o.serverName != ""):
		return nil, nil, nil, errors.New("--insecure and the --tls-* flags contradict each other: choose one")
	case (o.certPath == "") != (o.keyPath == ""):
		return nil, nil, nil, errors.New("--tls-cert-path and --tls-key-path go together: give both or neither")
	case o.insecure:
		creds = insecure.NewCredentials()
	default:
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.serverName}
		if o.certPath != "" {
			pair, err := tls.LoadX509KeyPair(o.certPath, o.keyPath)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("--tls-cert-path, --tls-key-path: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		if o.caPath != "" {
			pem, err := os.ReadFile(o.caPath)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("--tls-ca-path: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, nil, nil, fmt.Errorf("--tls-ca-path %s: no PEM certificate found", o.caPath)
			}
			cfg.RootCAs = pool
		}
		creds = credentials.NewTLS(cfg)
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearerKey{key: o.token}))
	}
	conn, err := grpc.NewClient(o.endpoint, dial...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--endpoint %q: %w", o.endpoint, err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	return &client{
		conn:   conn,
		perm:   pb.NewPermissionServiceClient(conn),
		rels:   pb.NewRelationshipServiceClient(conn),
		schema: pb.NewSchemaServiceClient(conn),
		opts:   o,
	}, ctx, cancel, nil
}

func (c *client) close() { c.conn.Close() }

// callError turns a failed call into an error that says which call failed
// and, for the usual setup mistakes, what to change.
func (c *client) callError(call string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", call, err)
	}
	msg := fmt.Sprintf("%s: %s: %s", call, st.Code(), st.Message())
	switch st.Code() {
	case codes.Unauthenticated:
		if c.opts.token == "" {
			msg += " (no key given: set --token or MANDATE_TOKEN)"
		} else {
			msg += " (the server refused the key given by --token or MANDATE_TOKEN)"
		}
	case codes.Unavailable:
		hint := fmt.Sprintf(" (is a server running at %s?", c.opts.endpoint)
		if !c.opts.insecure {
			hint += " a plaintext server needs --insecure or MANDATE_INSECURE=true"
		}
		msg += hint + ")"
	}
	return errors.New(msg)
}

// consistencyOptions are the read-freshness flags of the read commands.
type consistencyOptions struct {
	atLeast string
	exact   string
	full    bool
}

func addConsistencyFlags(f *pflag.FlagSet, o *consistencyOptions) {
	f.StringVar(&o.atLeast, "consistency-token", "", "answer at a revision at least as fresh as this revision token (from a write)")
	f.StringVar(&o.exact, "exact-token", "", "answer exactly at this revision token's revision")
	f.BoolVar(&o.full, "fully-consistent", false, "answer at the store's latest revision (slowest)")
}

// consistency returns the requested consistency; nil (minimize latency)
// when no flag is given.
func (o *consistencyOptions) consistency() (*pb.Consistency, error) {
	n := 0
	for _, set := range []bool{o.atLeast != "", o.exact != "", o.full} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("--consistency-token, --exact-token and --fully-consistent are exclusive: give one")
	}
	switch {
	case o.atLeast != "":
		return &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: &pb.RevisionToken{Token: o.atLeast}}}, nil
	case o.exact != "":
		return &pb.Consistency{Requirement: &pb.Consistency_AtExactSnapshot{AtExactSnapshot: &pb.RevisionToken{Token: o.exact}}}, nil
	case o.full:
		return &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}}, nil
	}
	return nil, nil
}

// parseContext reads a --context JSON object of caveat parameters.
func parseContext(text string) (*structpb.Struct, error) {
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		return nil, fmt.Errorf("--context: expected a JSON object such as '{\"amount\": 10}': %w", err)
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, fmt.Errorf("--context: %w", err)
	}
	return s, nil
}

// parseObject reads type:id (no relation, no wildcard) for the argument or
// flag named what.
func parseObject(what, text string) (*pb.ObjectReference, error) {
	typ, id, ok := strings.Cut(strings.TrimSpace(text), ":")
	if !ok || typ == "" || id == "" {
		return nil, fmt.Errorf("%s %q: expected type:id", what, text)
	}
	o := rel.Object{Type: typ, ID: id}
	if err := rel.ValidateObject(o); err != nil {
		return nil, fmt.Errorf("%s %q: %w", what, text, err)
	}
	return &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}, nil
}

// parseSubject reads type:id[#relation] for the argument named what.
func parseSubject(what, text string) (*pb.SubjectReference, error) {
	s, err := rel.ParseSubject(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return subjectProto(s), nil
}

// parseResourcePermission reads type:id#permission for the argument named
// what.
func parseResourcePermission(what, text string) (*pb.ObjectReference, string, error) {
	o, perm, err := rel.ParseObjectRelation(text)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", what, err)
	}
	return &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}, perm, nil
}

func subjectProto(s rel.Subject) *pb.SubjectReference {
	return &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: s.Type, ObjectId: s.ID}, OptionalRelation: s.Relation}
}

func objectString(o *pb.ObjectReference) string {
	return o.GetObjectType() + ":" + o.GetObjectId()
}

// decisionString renders a decision as allowed, denied or conditional.
func decisionString(d pb.Decision) string {
	switch d {
	case pb.Decision_DECISION_ALLOWED:
		return "allowed"
	case pb.Decision_DECISION_DENIED:
		return "denied"
	case pb.Decision_DECISION_CONDITIONAL:
		return "conditional"
	case pb.Decision_DECISION_APPROVAL_REQUIRED:
		return "approval_required"
	}
	return "unspecified(" + strconv.Itoa(int(d)) + ")"
}
