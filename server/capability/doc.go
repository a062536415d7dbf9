// Package capability implements Mandate's capability tokens: signed,
// time-bound, task-scoped delegation edges that an agent carries instead of
// the store holding them, narrowed offline by attenuation and revoked by id
// with cascade to every token derived from the revoked one.
//
// Tokens are Biscuits (github.com/biscuit-auth/biscuit-go/v2, v3 blocks)
// built with the library's Go API; its text parser is never used. Every
// block carries a signed descriptor (the block's context field, JSON: its
// id, its parent's id, holder, rights, expiry, task, use limit) and Datalog
// checks equivalent to the descriptor's rights and task. A request is
// allowed by a token only when both the descriptors (evaluated natively,
// which also names the deciding block) and the Datalog checks (evaluated by
// biscuit-go with a deliberate time limit) allow it, the token is not
// revoked, and — in Checker — the principal's live chain still holds the
// permission in the engine.
//
// Expiry lives only in the descriptors: the authorizer is given no time
// fact, so a Datalog result depends on the request alone and is memoized
// per verified token, keeping Datalog off the hot path as the verified-token
// cache keeps signature verification off it.
package capability
