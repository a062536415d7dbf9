package capability

import (
	"errors"
	"fmt"
	"sync"
	"time"

	biscuit "github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/datalog"

	"github.com/mandate-authz/mandate/store/rel"
)

// Defaults of VerifierOptions' zero fields.
const (
	// DefaultDatalogTimeout bounds one Datalog evaluation. Mandate's blocks
	// carry no facts or rules (decodeToken refuses them), so evaluation is
	// bounded by the token's size and takes microseconds; the limit is a
	// backstop, not a budget. biscuit-go's own 2 ms default, and 50 ms
	// measured here with 16 concurrent evaluations on 2 busy cores, denied
	// spuriously when the evaluation goroutine was descheduled, so the
	// limit is generous and a timeout is reported as its own reason.
	DefaultDatalogTimeout = time.Second
	// DefaultCacheSize bounds the verified-token cache.
	DefaultCacheSize = 10_000
	// memoSize bounds the Datalog results remembered per verified token.
	memoSize = 256
)

// VerifierOptions configures a Verifier; zero fields take the defaults.
type VerifierOptions struct {
	DatalogTimeout time.Duration
	CacheSize      int
	Now            func() time.Time
}

// Verifier verifies tokens against a key set, caching verified tokens so
// that signatures are checked once per token. The cache is a map keyed by
// the token's text: Go hashes it, and the full text is compared on a hit,
// so no hash collision can serve one token's verification for another
// (hashing with SHA-256 instead cost 0.7-2.4 us a hit). Safe for
// concurrent use.
type Verifier struct {
	keys *KeySet
	opts VerifierOptions

	mu    sync.Mutex
	cache map[string]*Verified
}

// NewVerifier returns a verifier of tokens signed by keys.
func NewVerifier(keys *KeySet, opts VerifierOptions) *Verifier {
	if opts.DatalogTimeout <= 0 {
		opts.DatalogTimeout = DefaultDatalogTimeout
	}
	if opts.CacheSize <= 0 {
		opts.CacheSize = DefaultCacheSize
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Verifier{keys: keys, opts: opts, cache: make(map[string]*Verified)}
}

// Verified is a token whose every signature verified against a known key.
// It is shared between callers through the cache and never modified except
// for its Datalog memo.
type Verified struct {
	Token
	expires time.Time

	memoMu sync.Mutex
	memo   map[memoKey]memoResult
}

type memoKey struct {
	resource   rel.Object
	permission string
	task       string
}

type memoResult struct {
	allowed bool
	detail  string
}

// Verify decodes text and verifies every block's signature against the
// key named by the authority block, refusing expired tokens. A token
// verified before is served from the cache unless it has expired or its
// key was retired since.
func (v *Verifier) Verify(text string) (*Verified, error) {
	return v.verifyAt(text, v.opts.Now())
}

func (v *Verifier) verifyAt(text string, now time.Time) (*Verified, error) {
	if len(text) > MaxTokenLength {
		return nil, &Error{Reason: ReasonTooLong, Block: -1, Err: fmt.Errorf("token is %d bytes, at most %d allowed", len(text), MaxTokenLength)}
	}
	v.mu.Lock()
	vt := v.cache[text]
	v.mu.Unlock()
	if vt != nil {
		if err := v.stillValid(vt, now); err != nil {
			v.mu.Lock()
			delete(v.cache, text)
			v.mu.Unlock()
			return nil, err
		}
		return vt, nil
	}
	vt, err := v.verify(text)
	if err != nil {
		return nil, err
	}
	if err := v.stillValid(vt, now); err != nil {
		return nil, err
	}
	v.mu.Lock()
	if len(v.cache) >= v.opts.CacheSize {
		// Evict a quarter at once (expired entries first, then arbitrary
		// ones in map order), so that the scan is paid once per quarter of
		// the capacity rather than on every insert.
		keep := v.opts.CacheSize * 3 / 4
		for k, e := range v.cache {
			if !now.Before(e.expires) {
				delete(v.cache, k)
			}
		}
		for k := range v.cache {
			if len(v.cache) <= keep {
				break
			}
			delete(v.cache, k)
		}
	}
	v.cache[text] = vt
	v.mu.Unlock()
	return vt, nil
}

// stillValid refuses a verified token that has since expired or whose key
// was retired.
func (v *Verifier) stillValid(vt *Verified, now time.Time) error {
	if !now.Before(vt.expires) {
		return &Error{Reason: ReasonExpired, Block: vt.expiringBlock(), Err: fmt.Errorf("expired at %s", vt.expires.Format(time.RFC3339))}
	}
	if _, ok := v.keys.Public(vt.Blocks[0].KeyID); !ok {
		return &Error{Reason: ReasonUnknownKey, Block: 0, Err: fmt.Errorf("%w %q (retired or never known here)", ErrUnknownKey, vt.Blocks[0].KeyID)}
	}
	return nil
}

func (v *Verifier) verify(text string) (*Verified, error) {
	bis, blocks, _, err := decodeToken(text)
	if err != nil {
		return nil, err
	}
	kid := blocks[0].KeyID
	pub, ok := v.keys.Public(kid)
	if !ok {
		return nil, &Error{Reason: ReasonUnknownKey, Block: 0, Err: fmt.Errorf("%w %q", ErrUnknownKey, kid)}
	}
	if err := verifySignatures(bis, pub); err != nil {
		return nil, &Error{Reason: ReasonBadSignature, Block: -1, Err: err}
	}
	vt := &Verified{Token: Token{Blocks: blocks, biscuit: bis}, memo: make(map[memoKey]memoResult)}
	vt.expires = vt.Expires()
	return vt, nil
}

// verifySignatures checks the chain of signatures from the root key; the
// authorizer it returns is discarded, since each request gets its own.
func verifySignatures(bis *biscuit.Biscuit, pub []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("biscuit verification failed: %v", r)
		}
	}()
	_, err = bis.Authorizer(pub)
	return err
}

func (vt *Verified) expiringBlock() int {
	idx := 0
	for i, b := range vt.Blocks {
		if !b.Expires.IsZero() && b.Expires.Equal(vt.expires) {
			idx = i
		}
	}
	return idx
}

// Request is what a token is asked to allow.
type Request struct {
	Resource   rel.Object
	Permission string
	// Holder is the subject making the request: it must be the token's
	// current holder.
	Holder rel.Object
	// Task is the task the request is made for ("" for none).
	Task string
}

// Allowance is a token's answer for one request, before revocation and the
// principal's live chain are considered.
type Allowance struct {
	// Block is the deciding block: for an allow the narrowest block in
	// force (the last), for a denial the first block that refuses.
	Block int
}

// Allow reports whether the token allows req at now: its holder must be
// the requester, and every block's expiry, rights and task must admit the
// request, both as the descriptors say and as the Datalog checks evaluate.
// A refusal is an *Error naming the block and reason.
func (v *Verifier) Allow(vt *Verified, req Request) (Allowance, error) {
	return v.allowAt(vt, req, v.opts.Now())
}

func (v *Verifier) allowAt(vt *Verified, req Request, now time.Time) (Allowance, error) {
	if holder := vt.Holder(); holder != req.Holder.String() {
		return Allowance{Block: vt.holderBlock()}, &Error{Reason: ReasonWrongHolder, Block: vt.holderBlock(),
			Err: fmt.Errorf("token is held by %s, the request is made by %s", holder, req.Holder)}
	}
	for i, b := range vt.Blocks {
		switch {
		case !b.Expires.IsZero() && !now.Before(b.Expires):
			return Allowance{Block: i}, &Error{Reason: ReasonExpired, Block: i, Err: fmt.Errorf("expired at %s", b.Expires.Format(time.RFC3339))}
		case len(b.Rights) > 0 && !anyCovers(b.Rights, req.Resource, req.Permission):
			return Allowance{Block: i}, &Error{Reason: ReasonOutOfScope, Block: i, Err: fmt.Errorf("%s on %s is not among its rights", req.Permission, req.Resource)}
		case b.Task != "" && b.Task != req.Task:
			return Allowance{Block: i}, &Error{Reason: ReasonTaskMismatch, Block: i, Err: fmt.Errorf("restricted to task %q, the request is for task %q", b.Task, req.Task)}
		}
	}
	last := len(vt.Blocks) - 1
	res, err := v.datalog(vt, req)
	if err != nil {
		return Allowance{Block: -1}, err
	}
	if !res.allowed {
		return Allowance{Block: -1}, &Error{Reason: ReasonCheckFailed, Block: -1, Err: errors.New(res.detail)}
	}
	return Allowance{Block: last}, nil
}

func anyCovers(rights []Right, obj rel.Object, permission string) bool {
	for _, r := range rights {
		if r.covers(obj, permission) {
			return true
		}
	}
	return false
}

func (vt *Verified) holderBlock() int {
	for i := len(vt.Blocks) - 1; i >= 0; i-- {
		if vt.Blocks[i].Holder != "" {
			return i
		}
	}
	return 0
}

// datalog evaluates every block's checks for req, remembering the result:
// with no time fact the outcome depends on the request alone.
func (v *Verifier) datalog(vt *Verified, req Request) (memoResult, error) {
	key := memoKey{resource: req.Resource, permission: req.Permission, task: req.Task}
	vt.memoMu.Lock()
	res, ok := vt.memo[key]
	vt.memoMu.Unlock()
	if ok {
		return res, nil
	}
	res, err := v.evaluate(vt, req)
	if err != nil {
		return res, err
	}
	vt.memoMu.Lock()
	if len(vt.memo) < memoSize {
		vt.memo[key] = res
	}
	vt.memoMu.Unlock()
	return res, nil
}

// requestPolicy allows once every check has passed: the request's resource
// fact always exists.
var requestPolicy = biscuit.Policy{Kind: biscuit.PolicyKindAllow, Queries: []biscuit.Rule{{
	Head: biscuit.Predicate{Name: "allow"},
	Body: []biscuit.Predicate{{Name: "resource", IDs: []biscuit.Term{biscuit.Variable("t"), biscuit.Variable("i")}}},
}}}

func (v *Verifier) evaluate(vt *Verified, req Request) (res memoResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = memoResult{}, &Error{Reason: ReasonMalformed, Block: -1, Err: fmt.Errorf("datalog evaluation failed: %v", r)}
		}
	}()
	a, err := biscuit.NewVerifier(vt.biscuit, biscuit.WithWorldOptions(datalog.WithMaxDuration(v.opts.DatalogTimeout)))
	if err != nil {
		return memoResult{}, &Error{Reason: ReasonMalformed, Block: -1, Err: err}
	}
	a.AddFact(biscuit.Fact{Predicate: biscuit.Predicate{Name: "resource", IDs: []biscuit.Term{biscuit.String(req.Resource.Type), biscuit.String(req.Resource.ID)}}})
	a.AddFact(biscuit.Fact{Predicate: biscuit.Predicate{Name: "permission", IDs: []biscuit.Term{biscuit.String(req.Permission)}}})
	if req.Task != "" {
		a.AddFact(biscuit.Fact{Predicate: biscuit.Predicate{Name: "task", IDs: []biscuit.Term{biscuit.String(req.Task)}}})
	}
	a.AddPolicy(requestPolicy)
	switch err := a.Authorize(); {
	case err == nil:
		return memoResult{allowed: true}, nil
	case errors.Is(err, datalog.ErrWorldRunLimitTimeout):
		// Not remembered: a timeout says nothing about the request.
		return memoResult{}, &Error{Reason: ReasonTimeout, Block: -1, Err: fmt.Errorf("datalog evaluation exceeded %v", v.opts.DatalogTimeout)}
	case errors.Is(err, datalog.ErrWorldRunLimitMaxFacts), errors.Is(err, datalog.ErrWorldRunLimitMaxIterations):
		return memoResult{}, &Error{Reason: ReasonCheckFailed, Block: -1, Err: err}
	default:
		return memoResult{detail: err.Error()}, nil
	}
}
