package capability

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	biscuit "github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/datalog"
	"github.com/biscuit-auth/biscuit-go/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-authz/mandate/store/rel"
)

// Limits on tokens (README limits table).
const (
	// MaxTokenLength is the longest encoded token accepted, in bytes.
	MaxTokenLength = 16 << 10
	// MaxBlocks is the most blocks (authority plus attenuations) a token may
	// have.
	MaxBlocks = 16
	// MaxRights is the most rights one block may list.
	MaxRights = 64
	// MaxTTL is the longest lifetime a token may be minted with.
	MaxTTL = 30 * 24 * time.Hour
	// MaxTaskLength bounds a task id.
	MaxTaskLength = 256
)

// descriptorVersion leads every block descriptor, so the format can evolve.
const descriptorVersion = 1

// Right is what a token lets its holder do: Permissions on one object, or on
// every object of Type when ID is empty.
type Right struct {
	Type        string   `json:"type"`
	ID          string   `json:"id,omitempty"`
	Permissions []string `json:"permissions"`
}

func (r Right) String() string {
	id := r.ID
	if id == "" {
		id = "*"
	}
	return r.Type + ":" + id + "#" + strings.Join(r.Permissions, ",")
}

// ParseRight parses "type:id#perm[,perm...]"; the id "*" means every object
// of the type.
func ParseRight(s string) (Right, error) {
	obj, perms, ok := strings.Cut(s, "#")
	typ, id, ok2 := strings.Cut(obj, ":")
	if !ok || !ok2 || perms == "" {
		return Right{}, fmt.Errorf("right %q: expected type:id#permission (id * for every object of the type)", s)
	}
	r := Right{Type: typ, Permissions: strings.Split(perms, ",")}
	if id != rel.Wildcard {
		r.ID = id
	}
	if err := r.validate(); err != nil {
		return Right{}, fmt.Errorf("right %q: %w", s, err)
	}
	return r, nil
}

func (r Right) validate() error {
	id := r.ID
	if id == "" {
		id = "x" // a type right: only the type is checked
	}
	if err := rel.ValidateObject(rel.Object{Type: r.Type, ID: id}); err != nil {
		return err
	}
	if len(r.Permissions) == 0 {
		return errors.New("no permission named")
	}
	for _, p := range r.Permissions {
		if err := rel.ValidateSubject(rel.Subject{Type: p, ID: "x"}); err != nil {
			return fmt.Errorf("permission %q: expected a lowercase identifier", p)
		}
	}
	return nil
}

// covers reports whether r grants permission on obj.
func (r Right) covers(obj rel.Object, permission string) bool {
	return r.Type == obj.Type && (r.ID == "" || r.ID == obj.ID) && slices.Contains(r.Permissions, permission)
}

// within reports whether every permission r grants is granted by some
// right of parent.
func (r Right) within(parent []Right) bool {
	for _, p := range r.Permissions {
		ok := false
		for _, q := range parent {
			if q.Type == r.Type && (q.ID == "" || q.ID == r.ID) && slices.Contains(q.Permissions, p) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Block is one block's signed descriptor, carried as the Biscuit block's
// context. The authority block names the key, the principal and the first
// holder, and has rights and an expiry; an attenuation block may name a new
// holder and narrows with its own rights, expiry, task or use limit.
type Block struct {
	Version int `json:"v"`
	// ID is this block's id; a token's id is the id of its last block.
	ID string `json:"id"`
	// Parent is the previous block's id; empty for the authority block.
	Parent string `json:"parent,omitempty"`
	// KeyID names the root key that signed the authority block.
	KeyID string `json:"kid,omitempty"`
	// OnBehalfOf is the principal (authority block only).
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
	// Holder is the agent holding the token from this block on.
	Holder string `json:"holder,omitempty"`
	// Rights narrows what the token allows; empty: as the previous block.
	Rights []Right `json:"rights,omitempty"`
	// Expires is when this block stops allowing anything; zero: as the
	// previous block.
	Expires time.Time `json:"expires,omitzero"`
	// Task restricts the token to requests for this task.
	Task string `json:"task,omitempty"`
	// Context is caveat context the principal's check is evaluated with;
	// it overrides the request's (authority block only).
	Context map[string]any `json:"context,omitempty"`
	// MaxUses limits how many checks this block allows; 0: no limit.
	MaxUses int `json:"max_uses,omitempty"`
	// IssuedAt is when the block was made.
	IssuedAt time.Time `json:"issued_at"`
}

// Grant is what Mint delegates.
type Grant struct {
	Holder     rel.Object // an agent
	OnBehalfOf rel.Object // the principal: a user, or an agent with its own chain
	Rights     []Right
	TTL        time.Duration
	Task       string
	Context    map[string]any
	MaxUses    int
}

// Narrowing is what Attenuate adds; zero fields narrow nothing.
type Narrowing struct {
	Holder  *rel.Object // a new holder, an agent
	Rights  []Right
	TTL     time.Duration
	Task    string
	MaxUses int
}

// Token is a parsed token whose signatures have not necessarily been
// verified: Inspect returns it, Verify returns a verified one.
type Token struct {
	Blocks []Block `json:"blocks"`
	// biscuit is nil for a token built by inspection alone.
	biscuit *biscuit.Biscuit
}

// ID is the token's id: its last block's.
func (t *Token) ID() string { return t.Blocks[len(t.Blocks)-1].ID }

// RootID is the id of the authority block, shared by every token derived
// from the same mint.
func (t *Token) RootID() string { return t.Blocks[0].ID }

// Holder is the current holder: named by the last block that names one.
func (t *Token) Holder() string {
	for i := len(t.Blocks) - 1; i >= 0; i-- {
		if h := t.Blocks[i].Holder; h != "" {
			return h
		}
	}
	return ""
}

// Holders lists every holder from the first to the current.
func (t *Token) Holders() []string {
	var out []string
	for _, b := range t.Blocks {
		if b.Holder != "" {
			out = append(out, b.Holder)
		}
	}
	return out
}

// Principal is whom the token acts for.
func (t *Token) Principal() string { return t.Blocks[0].OnBehalfOf }

// Task is the token's task: the last block naming one (blocks may only
// repeat their parent's task).
func (t *Token) Task() string {
	for i := len(t.Blocks) - 1; i >= 0; i-- {
		if t.Blocks[i].Task != "" {
			return t.Blocks[i].Task
		}
	}
	return ""
}

// Expires is the earliest expiry of any block.
func (t *Token) Expires() time.Time {
	exp := t.Blocks[0].Expires
	for _, b := range t.Blocks[1:] {
		if !b.Expires.IsZero() && b.Expires.Before(exp) {
			exp = b.Expires
		}
	}
	return exp
}

// Rights are the rights in force: the last block's that lists any.
func (t *Token) Rights() []Right {
	for i := len(t.Blocks) - 1; i >= 0; i-- {
		if len(t.Blocks[i].Rights) > 0 {
			return t.Blocks[i].Rights
		}
	}
	return nil
}

// Encode returns the token's text form.
func (t *Token) Encode() (string, error) {
	if t.biscuit == nil {
		return "", errors.New("token has no signed form")
	}
	raw, err := t.biscuit.Serialize()
	if err != nil {
		return "", fmt.Errorf("serializing token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(raw), nil
}

func newBlockID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("drawing a block id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// ErrInvalidGrant refuses a grant shaped wrongly (the error names the
// field and what was expected).
var ErrInvalidGrant = errors.New("invalid grant")

// Mint signs a new token with the key set's signer. It checks the grant's
// shape only; Checker.Mint also checks that the principal holds every right.
func Mint(keys *KeySet, g Grant, now time.Time) (*Token, error) {
	signer, err := keys.Signer()
	if err != nil {
		return nil, fmt.Errorf("mint: %w", err)
	}
	if err := validateObject("holder", g.Holder); err != nil {
		return nil, fmt.Errorf("mint: %w: %w", ErrInvalidGrant, err)
	}
	if err := validateObject("on_behalf_of", g.OnBehalfOf); err != nil {
		return nil, fmt.Errorf("mint: %w: %w", ErrInvalidGrant, err)
	}
	if g.Holder == g.OnBehalfOf {
		return nil, fmt.Errorf("mint: %w: holder and on_behalf_of are both %s; a token delegates from a principal to another subject", ErrInvalidGrant, g.Holder)
	}
	if len(g.Rights) == 0 {
		return nil, fmt.Errorf("mint: %w: rights: expected at least one right", ErrInvalidGrant)
	}
	if g.TTL <= 0 || g.TTL > MaxTTL {
		return nil, fmt.Errorf("mint: %w: ttl %v: expected more than 0 and at most %v", ErrInvalidGrant, g.TTL, MaxTTL)
	}
	if g.MaxUses < 0 {
		return nil, fmt.Errorf("mint: %w: max_uses %d: expected 0 (no limit) or more", ErrInvalidGrant, g.MaxUses)
	}
	id, err := newBlockID()
	if err != nil {
		return nil, fmt.Errorf("mint: %w", err)
	}
	b := Block{
		Version: descriptorVersion, ID: id, KeyID: signer.ID,
		OnBehalfOf: g.OnBehalfOf.String(), Holder: g.Holder.String(),
		Rights: normalizeRights(g.Rights), Expires: now.Add(g.TTL).UTC().Truncate(time.Second),
		Task: g.Task, Context: g.Context, MaxUses: g.MaxUses, IssuedAt: now.UTC().Truncate(time.Second),
	}
	if err := checkBlockShape(&b, nil); err != nil {
		return nil, fmt.Errorf("mint: %w: %w", ErrInvalidGrant, err)
	}
	ctx, checks, err := blockContent(&b)
	if err != nil {
		return nil, fmt.Errorf("mint: %w", err)
	}
	// biscuit.NewBuilder cannot set the authority block's context, so the
	// block is built like any other and signed by New.
	bb := biscuit.NewBlockBuilder(&datalog.SymbolTable{})
	for _, c := range checks {
		if err := bb.AddCheck(c); err != nil {
			return nil, fmt.Errorf("mint: %w", err)
		}
	}
	bb.SetContext(ctx)
	bis, err := biscuit.New(rand.Reader, signer.Private, &datalog.SymbolTable{}, bb.Build())
	if err != nil {
		return nil, fmt.Errorf("mint: %w", err)
	}
	return &Token{Blocks: []Block{b}, biscuit: bis}, nil
}

// Attenuate appends a block that narrows t. It needs no key: a Biscuit
// carries the secret of its next block. It refuses to widen.
func Attenuate(t *Token, n Narrowing, now time.Time) (*Token, error) {
	if t.biscuit == nil {
		return nil, errors.New("attenuate: token has no signed form")
	}
	if len(t.Blocks) >= MaxBlocks {
		return nil, fmt.Errorf("attenuate: token already has %d blocks, at most %d allowed", len(t.Blocks), MaxBlocks)
	}
	if n.MaxUses < 0 {
		return nil, fmt.Errorf("attenuate: max_uses %d: expected 0 (no limit) or more", n.MaxUses)
	}
	id, err := newBlockID()
	if err != nil {
		return nil, fmt.Errorf("attenuate: %w", err)
	}
	b := Block{Version: descriptorVersion, ID: id, Parent: t.ID(), Rights: normalizeRights(n.Rights),
		Task: n.Task, MaxUses: n.MaxUses, IssuedAt: now.UTC().Truncate(time.Second)}
	if n.Holder != nil {
		if err := validateObject("holder", *n.Holder); err != nil {
			return nil, fmt.Errorf("attenuate: %w", err)
		}
		b.Holder = n.Holder.String()
	}
	if n.TTL < 0 {
		return nil, fmt.Errorf("attenuate: ttl %v: expected more than 0", n.TTL)
	}
	if n.TTL > 0 {
		b.Expires = now.Add(n.TTL).UTC().Truncate(time.Second)
		if exp := t.Expires(); b.Expires.After(exp) {
			// Asking for longer than the parent allows is not an error:
			// the parent's expiry stays in force; say so by keeping it.
			b.Expires = exp
		}
	}
	if err := checkBlockShape(&b, t.Blocks); err != nil {
		return nil, fmt.Errorf("attenuate: %w", err)
	}
	ctx, checks, err := blockContent(&b)
	if err != nil {
		return nil, fmt.Errorf("attenuate: %w", err)
	}
	bb := t.biscuit.CreateBlock()
	for _, c := range checks {
		if err := bb.AddCheck(c); err != nil {
			return nil, fmt.Errorf("attenuate: %w", err)
		}
	}
	bb.SetContext(ctx)
	next, err := t.biscuit.Append(rand.Reader, bb.Build())
	if err != nil {
		return nil, fmt.Errorf("attenuate: %w", err)
	}
	return &Token{Blocks: append(slices.Clone(t.Blocks), b), biscuit: next}, nil
}

func validateObject(field string, o rel.Object) error {
	if err := rel.ValidateObject(o); err != nil {
		return fmt.Errorf("%s %q: %w", field, o, err)
	}
	return nil
}

// normalizeRights sorts each right's permissions and drops duplicates, so
// equal rights encode alike.
func normalizeRights(rights []Right) []Right {
	if len(rights) == 0 {
		return nil
	}
	out := make([]Right, len(rights))
	for i, r := range rights {
		perms := slices.Clone(r.Permissions)
		slices.Sort(perms)
		out[i] = Right{Type: r.Type, ID: r.ID, Permissions: slices.Compact(perms)}
	}
	return out
}

// checkBlockShape validates b as the block following parents (nil: b is the
// authority block) and refuses anything that would widen them.
func checkBlockShape(b *Block, parents []Block) error {
	if b.Version != descriptorVersion {
		return fmt.Errorf("descriptor version %d: this mandate reads version %d", b.Version, descriptorVersion)
	}
	if len(b.ID) != 32 {
		return fmt.Errorf("block id %q: expected 32 hex digits", b.ID)
	}
	if _, err := hex.DecodeString(b.ID); err != nil {
		return fmt.Errorf("block id %q: expected 32 hex digits", b.ID)
	}
	if len(b.Rights) > MaxRights {
		return fmt.Errorf("%d rights, at most %d allowed", len(b.Rights), MaxRights)
	}
	for _, r := range b.Rights {
		if err := r.validate(); err != nil {
			return fmt.Errorf("right %s: %w", r, err)
		}
	}
	if b.Holder != "" {
		if _, err := parseObject(b.Holder); err != nil {
			return fmt.Errorf("holder: %w", err)
		}
	}
	if b.MaxUses < 0 {
		return fmt.Errorf("max_uses %d: expected 0 or more", b.MaxUses)
	}
	if len(b.Task) > MaxTaskLength {
		return fmt.Errorf("task is %d bytes, at most %d allowed", len(b.Task), MaxTaskLength)
	}
	if parents == nil {
		switch {
		case b.Parent != "":
			return errors.New("the authority block names a parent")
		case b.KeyID == "":
			return errors.New("the authority block names no key")
		case b.Holder == "":
			return errors.New("the authority block names no holder")
		case len(b.Rights) == 0:
			return errors.New("the authority block lists no rights")
		case b.Expires.IsZero():
			return errors.New("the authority block has no expiry")
		}
		if _, err := parseObject(b.OnBehalfOf); err != nil {
			return fmt.Errorf("on_behalf_of: %w", err)
		}
		return nil
	}
	parent := &Token{Blocks: parents}
	switch {
	case b.Parent != parent.ID():
		return fmt.Errorf("%w: names parent %q, but follows block %q", ErrWidening, b.Parent, parent.ID())
	case b.KeyID != "" || b.OnBehalfOf != "" || b.Context != nil:
		return fmt.Errorf("%w: only the authority block may name a key, a principal or a context", ErrWidening)
	case !b.Expires.IsZero() && b.Expires.After(parent.Expires()):
		return fmt.Errorf("%w: expires at %s, after its parent's %s", ErrWidening, b.Expires.Format(time.RFC3339), parent.Expires().Format(time.RFC3339))
	case b.Task != "" && parent.Task() != "" && b.Task != parent.Task():
		return fmt.Errorf("%w: task %q, but its parent is restricted to task %q", ErrWidening, b.Task, parent.Task())
	}
	for _, r := range b.Rights {
		if !r.within(parent.Rights()) {
			return fmt.Errorf("%w: right %s is not within its parent's rights", ErrWidening, r)
		}
	}
	return nil
}

func parseObject(s string) (rel.Object, error) {
	typ, id, ok := strings.Cut(s, ":")
	o := rel.Object{Type: typ, ID: id}
	if !ok {
		return o, fmt.Errorf("%q: expected type:id", s)
	}
	if err := rel.ValidateObject(o); err != nil {
		return o, fmt.Errorf("%q: %w", s, err)
	}
	return o, nil
}

// blockContent encodes b's descriptor and builds its Datalog checks: one
// check whose queries are the (object, permission) pairs its rights allow,
// and one for its task. Expiry stays out of Datalog (see the package doc).
func blockContent(b *Block) (string, []biscuit.Check, error) {
	ctx, err := json.Marshal(b)
	if err != nil {
		return "", nil, fmt.Errorf("encoding block descriptor: %w", err)
	}
	var checks []biscuit.Check
	if len(b.Rights) > 0 {
		var queries []biscuit.Rule
		for _, r := range b.Rights {
			var id biscuit.Term = biscuit.Variable("id")
			if r.ID != "" {
				id = biscuit.String(r.ID)
			}
			for _, p := range r.Permissions {
				queries = append(queries, biscuit.Rule{
					Head: biscuit.Predicate{Name: "query"},
					Body: []biscuit.Predicate{
						{Name: "resource", IDs: []biscuit.Term{biscuit.String(r.Type), id}},
						{Name: "permission", IDs: []biscuit.Term{biscuit.String(p)}},
					},
				})
			}
		}
		checks = append(checks, biscuit.Check{Queries: queries})
	}
	if b.Task != "" {
		checks = append(checks, biscuit.Check{Queries: []biscuit.Rule{{
			Head: biscuit.Predicate{Name: "query"},
			Body: []biscuit.Predicate{{Name: "task", IDs: []biscuit.Term{biscuit.String(b.Task)}}},
		}}})
	}
	return string(ctx), checks, nil
}

// decodeToken splits an encoded token into its Biscuit and descriptors
// without verifying signatures. It checks the container's shape first:
// biscuit-go's Unmarshal dereferences missing fields and would panic on a
// truncated or hand-made container.
func decodeToken(text string) (*biscuit.Biscuit, []Block, []byte, error) {
	if len(text) > MaxTokenLength {
		return nil, nil, nil, &Error{Reason: ReasonTooLong, Block: -1,
			Err: fmt.Errorf("token is %d bytes, at most %d allowed", len(text), MaxTokenLength)}
	}
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, nil, nil, malformed(-1, errors.New("token is empty"))
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(text, "="))
	if err != nil {
		return nil, nil, nil, malformed(-1, fmt.Errorf("expected unpadded URL-safe base64: %w", err))
	}
	var container pb.Biscuit
	if err := proto.Unmarshal(raw, &container); err != nil {
		return nil, nil, nil, malformed(-1, err)
	}
	signed := append([]*pb.SignedBlock{container.GetAuthority()}, container.GetBlocks()...)
	if len(signed) > MaxBlocks {
		return nil, nil, nil, &Error{Reason: ReasonTooLong, Block: -1, Err: fmt.Errorf("token has %d blocks, at most %d allowed", len(signed), MaxBlocks)}
	}
	if container.GetProof().GetNextSecret() == nil {
		// Sealed tokens could not be attenuated further; Mandate never
		// makes them, and biscuit-go v2.2.0 cannot verify them.
		return nil, nil, nil, malformed(-1, errors.New("token has no proof (sealed or truncated)"))
	}
	blocks := make([]Block, len(signed))
	for i, sb := range signed {
		if sb == nil || sb.NextKey == nil || sb.NextKey.Algorithm == nil || sb.NextKey.GetAlgorithm() != pb.PublicKey_Ed25519 ||
			len(sb.NextKey.Key) != 32 || len(sb.Signature) != 64 || len(sb.Block) == 0 {
			return nil, nil, nil, malformed(i, errors.New("signed block is incomplete"))
		}
		var blk pb.Block
		if err := proto.Unmarshal(sb.Block, &blk); err != nil {
			return nil, nil, nil, malformed(i, err)
		}
		if len(blk.FactsV2) > 0 || len(blk.RulesV2) > 0 || len(blk.ProtoReflect().GetUnknown()) > 0 || len(sb.ProtoReflect().GetUnknown()) > 0 {
			return nil, nil, nil, &Error{Reason: ReasonUnknownFacts, Block: i,
				Err: errors.New("block carries facts, rules or fields this version does not know; Mandate blocks carry only checks")}
		}
		if blk.GetVersion() != biscuit.MaxSchemaVersion {
			return nil, nil, nil, malformed(i, fmt.Errorf("block version %d, expected %d", blk.GetVersion(), biscuit.MaxSchemaVersion))
		}
		dec := json.NewDecoder(bytes.NewReader([]byte(blk.GetContext())))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&blocks[i]); err != nil {
			return nil, nil, nil, &Error{Reason: ReasonUnknownFacts, Block: i, Err: fmt.Errorf("block descriptor: %w", err)}
		}
		if dec.More() {
			return nil, nil, nil, &Error{Reason: ReasonUnknownFacts, Block: i, Err: errors.New("block descriptor: trailing data")}
		}
		var parents []Block
		if i > 0 {
			parents = blocks[:i]
		}
		if err := checkBlockShape(&blocks[i], parents); err != nil {
			reason := ReasonMalformed
			if errors.Is(err, ErrWidening) {
				reason = ReasonWidening
			}
			return nil, nil, nil, &Error{Reason: reason, Block: i, Err: err}
		}
	}
	bis, err := safeUnmarshal(raw)
	if err != nil {
		return nil, nil, nil, malformed(-1, err)
	}
	return bis, blocks, raw, nil
}

// safeUnmarshal runs biscuit-go's Unmarshal, turning a panic on input it
// does not expect into an error: bad input must never crash the server.
func safeUnmarshal(raw []byte) (b *biscuit.Biscuit, err error) {
	defer func() {
		if r := recover(); r != nil {
			b, err = nil, fmt.Errorf("biscuit decoding failed: %v", r)
		}
	}()
	return biscuit.Unmarshal(raw)
}

// Inspect decodes a token's blocks without verifying its signatures (it
// needs no key); use Verifier.Verify before trusting anything in it.
func Inspect(text string) (*Token, error) {
	bis, blocks, _, err := decodeToken(text)
	if err != nil {
		return nil, err
	}
	return &Token{Blocks: blocks, biscuit: bis}, nil
}
