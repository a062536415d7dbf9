// Package escalation decides which allowed agent checks need a person's
// approval. Admins write escalation rules in a YAML file; a rule matches an
// agent check by resource type, permission, agent type and chain length,
// and by an optional CEL condition over the request and over behavioural
// signals this replica keeps per agent (checks in the last minute, denials
// in the last hour, first use of a resource type or permission). The first
// matching rule, in file order, turns the allowed decision into
// APPROVAL_REQUIRED naming it; no rule ever turns a denial into an allow,
// and the operation core never asks about a person's own checks.
//
// The caller, for every agent check: asks Escalate when the engine allowed
// it, then calls Observe with the answer the agent got. Signals describe
// the agent's history before the check, so Escalate must come first.
package escalation

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// Input is one agent check.
type Input struct {
	Resource   rel.Object
	Permission string
	Agent      rel.Object
	// Chain is the delegation chain, agent first, principal last.
	Chain []rel.Object
	// Context is the request's caveat context.
	Context map[string]any
	// Time is when the check was asked; zero means now.
	Time time.Time
}

// Match is the rule that escalated a check.
type Match struct {
	Rule        string
	Description string
	// MaxDuration bounds the grant an approval gives; 0: the server default.
	MaxDuration time.Duration
}

// Options configure an Escalator. Zero fields take the defaults.
type Options struct {
	// MaxAgents bounds the agents whose signals are kept (DefaultMaxAgents).
	MaxAgents int
	// Timeout bounds one Escalate call's condition evaluations, on top of
	// MaxCost per condition (DefaultTimeout).
	Timeout time.Duration
	// PollInterval is how often WatchFile looks at the file
	// (DefaultPollInterval).
	PollInterval time.Duration
	// Now is the clock for Inputs without a Time (time.Now).
	Now func() time.Time
}

// Defaults of Options.
const (
	DefaultTimeout      = 50 * time.Millisecond
	DefaultPollInterval = 2 * time.Second
)

// Escalator holds the current rules, swapped atomically on reload, and the
// per-agent signals. It is safe for concurrent use.
type Escalator struct {
	rules   atomic.Pointer[Rules]
	signals *signalStore
	opts    Options
}

// New returns an Escalator with rules (nil: none yet).
func New(rules *Rules, opts Options) *Escalator {
	if opts.MaxAgents <= 0 {
		opts.MaxAgents = DefaultMaxAgents
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	e := &Escalator{signals: newSignalStore(opts.MaxAgents), opts: opts}
	e.rules.Store(rules)
	return e
}

// Rules returns the rules in force.
func (e *Escalator) Rules() *Rules { return e.rules.Load() }

// Swap puts rules in force for every later check (nil: no rules).
func (e *Escalator) Swap(r *Rules) { e.rules.Store(r) }

// Escalate reports the first rule, in file order, that matches an allowed
// agent check. An error (a condition that failed, ran over its cost or
// timed out) comes with the Match of the rule that failed and true: the
// caller fails closed and escalates.
func (e *Escalator) Escalate(ctx context.Context, in Input) (Match, bool, error) {
	rs := e.rules.Load()
	if rs.Len() == 0 {
		return Match{}, false, nil
	}
	if in.Time.IsZero() {
		in.Time = e.opts.Now()
	}
	for i, r := range rs.rules {
		if !r.matches(&in) {
			continue
		}
		if r.prog != nil {
			return e.evaluate(ctx, rs.rules[i:], &in)
		}
		return r.match(), true, nil
	}
	return Match{}, false, nil
}

// evaluate goes on from rules[0], the first matching rule with a
// condition, under one deadline for the rest of the call.
func (e *Escalator) evaluate(ctx context.Context, rules []*rule, in *Input) (Match, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	act := activation{in: in, sig: e.signals}
	for _, r := range rules {
		if !r.matches(in) {
			continue
		}
		if r.prog != nil {
			ok, err := r.eval(ctx, &act)
			if err != nil {
				return r.match(), true, fmt.Errorf("escalation: %w", err)
			}
			if !ok {
				continue
			}
		}
		return r.match(), true, nil
	}
	return Match{}, false, nil
}

// Observe feeds one agent check to the agent's signals; allowed is the
// answer the agent got, so an escalated check is not allowed (and not a
// use of its resource type or permission). It is cheap: a hash, a lock of
// one of 32 shards, a few counters.
func (e *Escalator) Observe(in Input, allowed bool) {
	if in.Time.IsZero() {
		in.Time = e.opts.Now()
	}
	e.signals.observe(in, allowed)
}

// Signals returns what this replica knows of in.Agent at in.Time, for in's
// resource type and permission (for tests and explanations).
func (e *Escalator) Signals(in Input) Signals {
	if in.Time.IsZero() {
		in.Time = e.opts.Now()
	}
	return e.signals.read(in)
}

// WatchFile reloads the rule file at path whenever it changes, until ctx
// ends: it polls the file's modification time and size every
// Options.PollInterval and, when they change, its SHA-256; a file that
// parses is swapped in atomically, a bad one keeps the rules in force and
// is logged with its error once per content.
func (e *Escalator) WatchFile(ctx context.Context, path string, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := newWatcher(path, e.rules.Load())
	t := time.NewTicker(e.opts.PollInterval)
	defer t.Stop()
	for {
		if r, changed, err := w.poll(); changed {
			if err != nil {
				log.Error("escalation rules: keeping the rules in force; the file has an error", "file", path, "error", err, "rules", e.rules.Load().Len())
			} else {
				e.Swap(r)
				log.Info("escalation rules: reloaded", "file", path, "rules", r.Len())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *rule) matches(in *Input) bool {
	if len(r.resourceTypes) > 0 && !has(r.resourceTypes, in.Resource.Type) {
		return false
	}
	if len(r.permissions) > 0 && !has(r.permissions, in.Permission) {
		return false
	}
	if len(r.agentTypes) > 0 && !has(r.agentTypes, in.Agent.Type) {
		return false
	}
	// A check without its chain matches any bound: not knowing the chain
	// must not spare a check from escalation.
	if n := len(in.Chain); n > 0 && (n < r.minChain || (r.maxChain > 0 && n > r.maxChain)) {
		return false
	}
	return true
}

func (r *rule) match() Match {
	return Match{Rule: r.name, Description: r.description, MaxDuration: r.maxDuration}
}
