package harness

import (
	"context"
	"fmt"

	"github.com/mandate-authz/mandate/bench/workload"
	"github.com/mandate-authz/mandate/store/rel"
)

// Engine is one system under test, started empty. Every call is safe for
// concurrent use.
type Engine interface {
	// Load writes the schema and the workload's relationships through the
	// engine's bulk import and returns once a check sees all of them.
	Load(ctx context.Context, w *workload.Workload) error
	// Check answers one document#view check.
	Check(ctx context.Context, c workload.Check) (bool, error)
	// CheckBulk answers the checks in one call, in order.
	CheckBulk(ctx context.Context, cs []workload.Check) ([]bool, error)
	// LookupResources lists the IDs of every document subject may view,
	// calling first (when not nil) as the first result arrives, so that
	// the harness can time a streamed lookup's first result.
	LookupResources(ctx context.Context, subject rel.Object, first func()) ([]string, error)
	// Write writes one new relationship.
	Write(ctx context.Context, r rel.Relationship) error
	// Close stops the engine and releases what it holds.
	Close() error
}

// AgentEngine is an Engine with delegation: it checks as an agent through
// the agent's chain of acts_for links.
type AgentEngine interface {
	Engine
	CheckAgent(ctx context.Context, c workload.AgentCheck) (bool, error)
}

// Consistency is what the harness asks of every engine's reads.
type Consistency string

const (
	// MinimizeLatency lets each engine answer from whatever state it finds
	// fastest (SpiceDB minimize_latency, OpenFGA MINIMIZE_LATENCY, Mandate
	// minimize_latency): each system's default.
	MinimizeLatency Consistency = "minimize_latency"
	// FullyConsistent makes every read see every completed write
	// (SpiceDB/Mandate fully_consistent, OpenFGA HIGHER_CONSISTENCY).
	FullyConsistent Consistency = "fully_consistent"
)

// ParseConsistency parses a --consistency value.
func ParseConsistency(s string) (Consistency, error) {
	switch Consistency(s) {
	case MinimizeLatency, FullyConsistent:
		return Consistency(s), nil
	}
	return "", fmt.Errorf("consistency %q: expected %q or %q", s, MinimizeLatency, FullyConsistent)
}

// Engine names, in the order they run.
const (
	MandateInProcess = "mandate"
	MandateGRPC      = "mandate-grpc"
	SpiceDBMemory    = "spicedb-memory"
	SpiceDBPostgres  = "spicedb-postgres"
	OpenFGAMemory    = "openfga-memory"
	OpenFGAPostgres  = "openfga-postgres"
)

// AllEngines lists every engine the harness knows, in run order: the
// peers' memory datastores last, as they are the slowest and their
// abandoned calls may keep a core busy for a while after they stop.
var AllEngines = []string{MandateInProcess, MandateGRPC, SpiceDBPostgres, OpenFGAPostgres, SpiceDBMemory, OpenFGAMemory}

// usesPostgres reports whether an engine needs a database.
func usesPostgres(name string) bool {
	return name == SpiceDBPostgres || name == OpenFGAPostgres || name == MandateGRPC+"-postgres"
}

// chunks splits n items into consecutive ranges of at most size.
func chunks(n, size int) [][2]int {
	var out [][2]int
	for lo := 0; lo < n; lo += size {
		out = append(out, [2]int{lo, min(lo+size, n)})
	}
	return out
}
