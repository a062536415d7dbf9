package server

import (
	"context"
	"runtime/debug"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// SpiceDB clients ask for the server's version with a request header and
// read it from the response (zed prints it in `zed version` and warns when
// the answer is missing or not a release). The keys are authzed-go's
// requestmeta.RequestServerVersion and responsemeta.ServerVersion.
const (
	requestVersionHeader = "io.spicedb.requestversion"
	versionResponseKey   = "io.spicedb.debug.version"
)

// Version is Mandate's version as the server reports it: the main module's
// version from the build (v0.0.0-dev for a build from a checkout), with the
// semver build metadata "+mandate". The metadata says which server this is
// and tells zed not to compare it with SpiceDB's releases.
func Version() string {
	v := "v0.0.0-dev"
	if bi, ok := debug.ReadBuildInfo(); ok && strings.HasPrefix(bi.Main.Version, "v") {
		v = bi.Main.Version
	}
	if i := strings.IndexByte(v, '+'); i >= 0 {
		v = v[:i]
	}
	return v + "+mandate"
}

// serverVersionUnary and serverVersionStream answer a version request as
// SpiceDB's serverversion middleware does, after authentication: SpiceDB
// v1.56 sends the version in the trailer, zed reads it from the header, so
// it goes in both.
func serverVersionUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	reportVersion(ctx, func(md metadata.MD) error { return grpc.SetHeader(ctx, md) }, func(md metadata.MD) { grpc.SetTrailer(ctx, md) })
	return handler(ctx, req)
}

func serverVersionStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	reportVersion(ss.Context(), ss.SetHeader, ss.SetTrailer)
	return handler(srv, ss)
}

func reportVersion(ctx context.Context, header func(metadata.MD) error, trailer func(metadata.MD)) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md.Get(requestVersionHeader)) == 0 {
		return
	}
	v := metadata.Pairs(versionResponseKey, Version())
	// Setting the header fails only once headers were sent, which has not
	// happened before the handler runs.
	_ = header(v)
	trailer(v)
}
