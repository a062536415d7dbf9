package difftest

import (
	"flag"
	"os"
	"testing"
)

// TestMain lets SpiceDB, the oracle, report its own bugs as errors rather
// than panics no test can recover (see WithoutTestFlags).
func TestMain(m *testing.M) {
	flag.Parse()
	os.Args = WithoutTestFlags(os.Args)
	os.Exit(m.Run())
}
