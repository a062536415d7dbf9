package engine

import (
	"testing"
	"unsafe"
)

// TestEdgeSize holds the edge to 24 bytes: the edge arrays are the largest
// part of the index, so a field that widens it costs every relationship.
func TestEdgeSize(t *testing.T) {
	if got := unsafe.Sizeof(edge{}); got != 24 {
		t.Errorf("an edge is %d bytes, want 24", got)
	}
}
