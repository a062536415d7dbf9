package memory_test

import (
	"testing"

	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/storetest"
)

func TestRecordsConformance(t *testing.T) {
	storetest.RunRecords(t, func(t *testing.T) storetest.RecordingStore { return memory.New() })
}
