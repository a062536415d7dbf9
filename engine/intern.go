package engine

import (
	"encoding/binary"
	"maps"
	"math"
	"slices"

	"github.com/mandate-authz/mandate/store/rel"
)

// Caveated relationships mostly repeat a few contexts: every delegation
// link of an agent fleet carries the same scope. The index keeps one
// edgeCaveat per caveat name and context, shared by every edge that names
// them, so a context and its converted form and decided outcomes (its memo)
// are held once, not per edge. Sharing the memo is sound because everything
// in it is a function of the caveat's name and context, which the sharing
// edges have in common, and of the compiled caveat and engine-supplied
// values, which the memo itself records and checks.

// internCaveat returns the index's edgeCaveat for c, counting one more edge
// that holds it. A context appendCaveatKey cannot encode gets an edgeCaveat
// of its own, never shared.
func (idx *index) internCaveat(c *rel.Caveat) *edgeCaveat {
	key, ok := appendCaveatKey(idx.keyBuf[:0], c)
	idx.keyBuf = key
	if !ok {
		return privateCaveat(c)
	}
	// The conversion in the index expression does not allocate.
	if x, ok := idx.caveats[string(key)]; ok {
		x.refs++
		return x
	}
	x := &edgeCaveat{name: c.Name, context: cloneContext(c.Context), key: string(key), refs: 1}
	idx.caveats[x.key] = x
	return x
}

// releaseCaveat counts one edge fewer holding x, forgetting x with the last
// one so that a stream of distinct contexts does not accumulate.
func (idx *index) releaseCaveat(x *edgeCaveat) {
	if x.key == "" {
		return
	}
	if x.refs--; x.refs == 0 {
		delete(idx.caveats, x.key)
	}
}

// privateCaveat is an edgeCaveat for one edge alone.
func privateCaveat(c *rel.Caveat) *edgeCaveat {
	return &edgeCaveat{name: c.Name, context: maps.Clone(c.Context)}
}

// appendCaveatKey appends to b an encoding of a caveat's name and context
// that two caveats share only when their names are equal and their contexts
// hold the same values of the same Go types, whatever the maps' order. It
// reports false, and the caveat is not interned, when the context holds a
// value of a type it does not encode: anything beyond what JSON and protobuf
// Struct decoding produce (nil, bool, string, float64, []any,
// map[string]any) and the int and int64 Go callers write.
func appendCaveatKey(b []byte, c *rel.Caveat) ([]byte, bool) {
	b = appendKeyString(b, c.Name)
	return appendKeyValue(b, c.Context)
}

func appendKeyValue(b []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(b, 'n'), true
	case bool:
		if x {
			return append(b, 't'), true
		}
		return append(b, 'f'), true
	case string:
		return appendKeyString(append(b, 's'), x), true
	case float64:
		// The bits, not the value: -0 and 0, and NaNs, stay apart.
		return binary.LittleEndian.AppendUint64(append(b, 'd'), math.Float64bits(x)), true
	case int:
		return binary.LittleEndian.AppendUint64(append(b, 'I'), uint64(x)), true
	case int64:
		return binary.LittleEndian.AppendUint64(append(b, 'i'), uint64(x)), true
	case []any:
		b = binary.AppendUvarint(append(b, 'l'), uint64(len(x)))
		for _, e := range x {
			var ok bool
			if b, ok = appendKeyValue(b, e); !ok {
				return b, false
			}
		}
		return b, true
	case map[string]any:
		// A nil map and an empty one are the same context.
		b = binary.AppendUvarint(append(b, 'm'), uint64(len(x)))
		for _, k := range slices.Sorted(maps.Keys(x)) {
			var ok bool
			if b, ok = appendKeyValue(appendKeyString(b, k), x[k]); !ok {
				return b, false
			}
		}
		return b, true
	}
	return b, false
}

// appendKeyString appends s length-first, so that no two sequences of
// strings encode alike.
func appendKeyString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// cloneContext copies a context appendCaveatKey encoded, lists and maps
// within it too: the interned copy outlives the relationship it came from
// and must not change with what its writer still holds.
func cloneContext(ctx map[string]any) map[string]any {
	if ctx == nil {
		return nil
	}
	out := make(map[string]any, len(ctx))
	for k, v := range ctx {
		out[k] = cloneValue(v)
	}
	return out
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cloneValue(e)
		}
		return out
	case map[string]any:
		return cloneContext(x)
	}
	return v
}
