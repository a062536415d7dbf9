package server

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash/fnv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
)

// Revision tokens and cursors are opaque to clients. Their format, version 1:
//
//	token:  'R' | 0x01 | instance[8] | uvarint(revision)                | sum[4]
//	cursor: 'C' | 0x01 | instance[8] | uvarint(revision) | uvarint(req) |
//	        uvarint(len(after)) | after                                  | sum[4]
//
// encoded as unpadded base64url. instance identifies the store the token was
// issued for, so a token from another installation (or from an earlier
// memory store) is refused instead of silently meaning some other revision;
// sum is the first 4 bytes of SHA-256 over everything before it, so typos
// and truncation are caught. A cursor also carries a hash of the request it
// belongs to (req), so it cannot resume a different query, and the last key
// or ID returned (after). Tokens are not secrets and not signatures: they
// only need to reject input that is not ours.
const (
	tokenKind  byte = 'R'
	cursorKind byte = 'C'
	formatV1   byte = 1
	sumLen          = 4
	headerLen       = 2 + 8
)

// instanceID identifies the store revision tokens are valid for.
type instanceID [8]byte

// newInstanceID derives an instance ID from a stable name, or draws a random
// one when name is empty.
func newInstanceID(name string) (instanceID, error) {
	var id instanceID
	if name == "" {
		if _, err := rand.Read(id[:]); err != nil {
			return id, fmt.Errorf("drawing a random store instance id: %w", err)
		}
		return id, nil
	}
	sum := sha256.Sum256([]byte("mandate-store:" + name))
	copy(id[:], sum[:])
	return id, nil
}

func seal(b []byte) string {
	sum := sha256.Sum256(b)
	return base64.RawURLEncoding.EncodeToString(append(b, sum[:sumLen]...))
}

// open checks the envelope of a token or cursor and returns its body (the
// bytes after the header, before the checksum). what names the field for
// error messages.
func (id instanceID) open(what, text string, kind byte) ([]byte, error) {
	if text == "" {
		return nil, status.Errorf(codes.InvalidArgument, "%s: empty; expected a token returned by this server", what)
	}
	raw, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s %q is malformed: not a token issued by Mandate (bad encoding)", what, clip(text))
	}
	if len(raw) < headerLen+sumLen+1 || raw[0] != kind {
		return nil, status.Errorf(codes.InvalidArgument, "%s %q is malformed: not a token issued by Mandate", what, clip(text))
	}
	if raw[1] != formatV1 {
		return nil, status.Errorf(codes.InvalidArgument, "%s %q has unsupported format version %d", what, clip(text), raw[1])
	}
	body, sum := raw[:len(raw)-sumLen], raw[len(raw)-sumLen:]
	want := sha256.Sum256(body)
	if !bytes.Equal(sum, want[:sumLen]) {
		return nil, status.Errorf(codes.InvalidArgument, "%s %q is corrupted (checksum mismatch)", what, clip(text))
	}
	if !bytes.Equal(body[2:headerLen], id[:]) {
		return nil, status.Errorf(codes.InvalidArgument, "%s %q was issued by a different Mandate store; tokens are only valid where they were issued", what, clip(text))
	}
	return body[headerLen:], nil
}

// clip shortens client input quoted back in error messages.
func clip(s string) string {
	if len(s) > 64 {
		return s[:61] + "..."
	}
	return s
}

// encodeToken returns the revision token for rev.
func (id instanceID) encodeToken(rev store.Revision) string {
	b := make([]byte, 0, headerLen+binary.MaxVarintLen64+sumLen)
	b = append(b, tokenKind, formatV1)
	b = append(b, id[:]...)
	b = binary.AppendUvarint(b, uint64(rev))
	return seal(b)
}

// decodeToken parses a revision token; what names the field for errors.
func (id instanceID) decodeToken(what, text string) (store.Revision, error) {
	body, err := id.open(what, text, tokenKind)
	if err != nil {
		return 0, err
	}
	rev, n := binary.Uvarint(body)
	if n <= 0 || n != len(body) {
		return 0, status.Errorf(codes.InvalidArgument, "%s %q is malformed: bad revision", what, clip(text))
	}
	return store.Revision(rev), nil
}

// cursor is the decoded position of a paged read or lookup.
type cursor struct {
	rev store.Revision
	// req identifies the request the cursor belongs to.
	req uint64
	// after is the last key or ID already returned.
	after string
}

func (id instanceID) encodeCursor(c cursor) string {
	b := make([]byte, 0, headerLen+3*binary.MaxVarintLen64+len(c.after)+sumLen)
	b = append(b, cursorKind, formatV1)
	b = append(b, id[:]...)
	b = binary.AppendUvarint(b, uint64(c.rev))
	b = binary.AppendUvarint(b, c.req)
	b = binary.AppendUvarint(b, uint64(len(c.after)))
	b = append(b, c.after...)
	return seal(b)
}

// decodeCursor parses a cursor and checks that it belongs to the request
// whose hash is req.
func (id instanceID) decodeCursor(what, text string, req uint64) (cursor, error) {
	body, err := id.open(what, text, cursorKind)
	if err != nil {
		return cursor{}, err
	}
	bad := status.Errorf(codes.InvalidArgument, "%s %q is malformed", what, clip(text))
	var c cursor
	rev, n := binary.Uvarint(body)
	if n <= 0 {
		return cursor{}, bad
	}
	body = body[n:]
	c.rev = store.Revision(rev)
	if c.req, n = binary.Uvarint(body); n <= 0 {
		return cursor{}, bad
	}
	body = body[n:]
	l, n := binary.Uvarint(body)
	if n <= 0 || uint64(len(body)-n) != l {
		return cursor{}, bad
	}
	c.after = string(body[n:])
	if c.req != req {
		return cursor{}, status.Errorf(codes.InvalidArgument, "%s belongs to a different request; a cursor resumes only the request that returned it", what)
	}
	return c, nil
}

// requestHash fingerprints a request for its cursors, leaving out the fields
// that legitimately change from page to page (cursor, limit, consistency),
// which clear must reset on the clone it is given.
func requestHash[M proto.Message](m M, clear func(M)) uint64 {
	c := proto.Clone(m).(M)
	clear(c)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		// Marshal fails only on invalid UTF-8 and the like, which the
		// request parsing rejects first; any fixed value keeps cursors
		// working.
		return 0
	}
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// Consistency follows SpiceDB's meanings; the core resolves it (see
// op.Consistency). mandate.v1 refuses tokens of other stores outright.

// token returns the revision token for rev.
func (s *Server) token(rev store.Revision) *pb.RevisionToken {
	return &pb.RevisionToken{Token: s.inst.encodeToken(rev)}
}

// consistencyFromProto parses a mandate.v1 consistency requirement.
func (s *Server) consistencyFromProto(c *pb.Consistency) (op.Consistency, error) {
	switch r := c.GetRequirement().(type) {
	case *pb.Consistency_AtLeastAsFresh:
		return s.tokenConsistency(op.AtLeastAsFresh, "consistency.at_least_as_fresh", r.AtLeastAsFresh)
	case *pb.Consistency_AtExactSnapshot:
		return s.tokenConsistency(op.AtExactSnapshot, "consistency.at_exact_snapshot", r.AtExactSnapshot)
	case *pb.Consistency_FullyConsistent:
		if r.FullyConsistent {
			return op.Consistency{Mode: op.FullyConsistent}, nil
		}
	}
	return op.Consistency{}, nil
}

func (s *Server) tokenConsistency(mode op.Mode, field string, t *pb.RevisionToken) (op.Consistency, error) {
	rev, err := s.inst.decodeToken(field, t.GetToken())
	if err != nil {
		return op.Consistency{}, err
	}
	return op.Consistency{Mode: mode, Revision: rev, Field: field}, nil
}

// resume parses a paged request's cursor (the page's exact revision and
// the last key or ID returned) or, without one, its consistency.
func (s *Server) resume(c *pb.Cursor, consistency *pb.Consistency, reqHash uint64) (op.Consistency, string, error) {
	if c == nil {
		cons, err := s.consistencyFromProto(consistency)
		return cons, "", err
	}
	return s.resumeCursor(c.GetToken(), reqHash)
}

// resumeCursor decodes a cursor of either API.
func (s *Server) resumeCursor(token string, reqHash uint64) (op.Consistency, string, error) {
	cur, err := s.inst.decodeCursor("optional_cursor", token, reqHash)
	if err != nil {
		return op.Consistency{}, "", err
	}
	return op.Consistency{Mode: op.AtExactSnapshot, Revision: cur.rev, Field: "optional_cursor"}, cur.after, nil
}

// cursorAfter encodes the cursor resuming after key or ID after.
func (s *Server) cursorAfter(rev store.Revision, reqHash uint64, after string) string {
	return s.inst.encodeCursor(cursor{rev: rev, req: reqHash, after: after})
}
