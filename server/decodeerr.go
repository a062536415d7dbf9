package server

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A request the codec cannot decode is the caller's mistake, but gRPC
// answers every codec error with INTERNAL ("grpc: failed to unmarshal the
// received message"), written to the client from inside RecvMsg before the
// handler can say otherwise. So the server asks for messages through a
// *decodeTarget: the codec decodes into its message and, instead of
// failing, leaves the error (a *requestError naming the field) in it, which
// the caller returns as INVALID_ARGUMENT. Unary handlers get it through
// grpcServer, which every service is registered on; streams through
// decodeStreams, the outermost stream interceptor.

// maxNesting is how deep messages may nest in a request: the standard
// protobuf decoder's limit, which the generated decoder does not check.
const maxNesting = protowire.DefaultRecursionLimit

// maxFieldPath bounds the field path an error names (a deeply nested
// field's path is as long as the request is deep).
const maxFieldPath = 200

// requestError is a request the codec refused: invalid UTF-8 in a string
// field, nesting deeper than maxNesting, or malformed wire bytes.
type requestError struct {
	msg   string
	deep  bool     // nested too deep (else: not UTF-8)
	rpath []string // the field's path, innermost first
}

func (e *requestError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	path := make([]string, len(e.rpath))
	for i, p := range e.rpath {
		path[len(path)-1-i] = p
	}
	if e.deep {
		return fmt.Sprintf("%s: messages nested more than %d deep", path[0], maxNesting)
	}
	return fmt.Sprintf("%s: not valid UTF-8; strings must be UTF-8", fieldPath(path))
}

// diagnose walks a message's wire bytes against its descriptor and returns
// the first message nested deeper than maxNesting and, with utf8Check, the
// first string that is not UTF-8, naming the field; nil if it finds
// neither (malformed bytes are left to the decoder). Its recursion stops at
// maxNesting, and it allocates only for the error.
func diagnose(b []byte, md protoreflect.MessageDescriptor, depth int, utf8Check bool) *requestError {
	whole := b
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		at := len(whole) - len(b)
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if typ != protowire.BytesType || fd == nil {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return nil
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		var bad *requestError
		switch fd.Kind() {
		case protoreflect.StringKind:
			if utf8Check && !utf8.Valid(v) {
				bad = &requestError{}
			}
		case protoreflect.MessageKind, protoreflect.GroupKind:
			if depth+1 >= maxNesting {
				bad = &requestError{deep: true}
			} else {
				bad = diagnose(v, fd.Message(), depth+1, utf8Check)
			}
		}
		if bad != nil {
			name := string(fd.Name())
			if fd.IsList() || fd.IsMap() {
				name += "[" + strconv.Itoa(occurrences(whole[:at], num)) + "]"
			}
			bad.rpath = append(bad.rpath, name)
			return bad
		}
	}
	return nil
}

// occurrences counts field num in well-formed wire bytes.
func occurrences(b []byte, num protowire.Number) int {
	count := 0
	for len(b) > 0 {
		n2, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if n = protowire.ConsumeFieldValue(n2, typ, b); n < 0 {
			break
		}
		b = b[n:]
		if n2 == num {
			count++
		}
	}
	return count
}

// canNest reports whether messages of type md can contain themselves
// (google.protobuf.Struct can), so that a request of that type can nest as
// deep as its size allows.
func canNest(md protoreflect.MessageDescriptor) bool {
	onPath := map[protoreflect.FullName]bool{}
	done := map[protoreflect.FullName]bool{}
	var visit func(m protoreflect.MessageDescriptor) bool
	visit = func(m protoreflect.MessageDescriptor) bool {
		name := m.FullName()
		if onPath[name] {
			return true
		}
		if done[name] {
			return false
		}
		onPath[name] = true
		fields := m.Fields()
		for i := range fields.Len() {
			if f := fields.Get(i); f.Message() != nil && visit(f.Message()) {
				return true
			}
		}
		onPath[name], done[name] = false, true
		return false
	}
	return visit(md)
}

// fieldPath joins a field path, shortened in the middle when long.
func fieldPath(path []string) string {
	p := strings.Join(path, ".")
	if len(p) > maxFieldPath {
		p = p[:maxFieldPath/2] + "..." + p[len(p)-maxFieldPath/2:]
	}
	return p
}

// decodeTarget is a message to decode and, after decoding, why it could
// not be.
type decodeTarget struct {
	msg any
	err error
}

// recvInvalid receives into m through recv, answering a message the codec
// refused with INVALID_ARGUMENT.
func recvInvalid(recv func(any) error, m any) error {
	t := &decodeTarget{msg: m}
	if err := recv(t); err != nil {
		return err
	}
	if t.err != nil {
		return status.Error(codes.InvalidArgument, t.err.Error())
	}
	return nil
}

// grpcServer is the server's gRPC server: services registered on it answer
// a unary request the codec refused with INVALID_ARGUMENT.
// pb.RegisterXServer(s.grpc, ...) is all a service needs to do.
type grpcServer struct{ *grpc.Server }

func (g grpcServer) RegisterService(sd *grpc.ServiceDesc, impl any) {
	out := *sd
	out.Methods = make([]grpc.MethodDesc, len(sd.Methods))
	for i, m := range sd.Methods {
		h := m.Handler
		m.Handler = func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
			resp, err := h(srv, ctx, func(v any) error { return recvInvalid(dec, v) }, in)
			return resp, capStatus(err)
		}
		out.Methods[i] = m
	}
	g.Server.RegisterService(&out, impl)
}

// decodeStreams is the outermost stream interceptor: a streamed message the
// codec refused is INVALID_ARGUMENT, and the call's error is capped.
func decodeStreams(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return capStatus(handler(srv, decodeStream{ss}))
}

// decodeStream is a server stream whose received messages' decode
// failures are INVALID_ARGUMENT.
type decodeStream struct{ grpc.ServerStream }

func (s decodeStream) RecvMsg(m any) error { return recvInvalid(s.ServerStream.RecvMsg, m) }
