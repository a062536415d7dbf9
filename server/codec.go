package server

import (
	"encoding/binary"
	"fmt"
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// vtMessage is a message with generated (reflection-free) wire code:
// mandate.v1's (buf.gen.yaml) and authzed.api.v1's.
type vtMessage interface {
	SizeVT() int
	MarshalToSizedBufferVT([]byte) (int, error)
	UnmarshalVT([]byte) error
}

// codec is the server's gRPC codec. It uses generated wire code where a
// message has it: reflective decoding was about a fifth of CheckBulk's CPU
// time. The generated decoder does not check that strings are valid UTF-8,
// which proto3 requires, so it decodes only input that is all ASCII (the
// usual request: ASCII identifiers, short fields); anything else goes to the
// standard protobuf decoder, which rejects invalid UTF-8 as before. (It is
// called directly: the codec registry may hold another "proto" codec, such
// as SpiceDB's, in a process that links it.)
//
// The generated decoder does not bound nesting either, so a request whose
// type can nest (one with a google.protobuf.Struct) is scanned for depth
// before it decodes it.
type codec struct {
	nests *sync.Map // protoreflect.FullName -> bool: canNest
}

func newCodec() codec { return codec{nests: new(sync.Map)} }

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMessage)
	if !ok {
		pm, ok := v.(proto.Message)
		if !ok {
			return nil, fmt.Errorf("marshaling %T: not a protobuf message", v)
		}
		buf, err := proto.Marshal(pm)
		if err != nil {
			return nil, fmt.Errorf("marshaling %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVT(buf); err != nil {
			return nil, fmt.Errorf("marshaling %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBufferVT((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, fmt.Errorf("marshaling %T: %w", v, err)
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	raw := buf.ReadOnlyData()
	if t, ok := v.(*decodeTarget); ok {
		// The caller answers the error; see decodeTarget.
		t.err = c.unmarshal(raw, t.msg)
		return nil
	}
	return c.unmarshal(raw, v)
}

func (c codec) unmarshal(raw []byte, v any) error {
	pm, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("unmarshaling %T: not a protobuf message", v)
	}
	var err error
	if m, ok := v.(vtMessage); ok && isASCII(raw) {
		if md := pm.ProtoReflect().Descriptor(); c.canNest(md) {
			if bad := diagnose(raw, md, 0, false); bad != nil {
				return bad
			}
		}
		err = m.UnmarshalVT(raw)
	} else {
		err = proto.Unmarshal(raw, pm)
	}
	if err != nil {
		md := pm.ProtoReflect().Descriptor()
		if bad := diagnose(raw, md, 0, true); bad != nil {
			return bad
		}
		return &requestError{msg: fmt.Sprintf("not a valid %s message: %v", md.FullName(), err)}
	}
	return nil
}

// canNest caches canNest by message type.
func (c codec) canNest(md protoreflect.MessageDescriptor) bool {
	if v, ok := c.nests.Load(md.FullName()); ok {
		return v.(bool)
	}
	n := canNest(md)
	c.nests.Store(md.FullName(), n)
	return n
}

// isASCII reports whether b holds only bytes below 0x80, so that every
// string field in it is valid UTF-8.
func isASCII(b []byte) bool {
	for ; len(b) >= 8; b = b[8:] {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return false
		}
	}
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
