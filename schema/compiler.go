package schema

import (
	"context"
	"fmt"
)

// Compiler compiles schemas within limits, a bounded number at a time, for
// a server that compiles what callers send: the limits keep one
// compilation short, the bound keeps many from taking every core. SpiceDB's
// compiler cannot be interrupted, so a caller whose context ends gets its
// error at once while the compilation finishes on its own, still holding
// its slot.
type Compiler struct {
	limits Limits
	slots  chan struct{}
}

// DefaultConcurrentCompiles is how many compilations a Compiler runs at
// once when asked for zero.
const DefaultConcurrentCompiles = 2

// NewCompiler returns a Compiler within limits l (zero fields: the
// defaults) running at most concurrent compilations at once (zero or less:
// DefaultConcurrentCompiles).
func NewCompiler(l Limits, concurrent int) *Compiler {
	if concurrent <= 0 {
		concurrent = DefaultConcurrentCompiles
	}
	return &Compiler{limits: l.withDefaults(), slots: make(chan struct{}, concurrent)}
}

// Limits returns the limits the compiler applies.
func (c *Compiler) Limits() Limits { return c.limits }

// acquire waits for a slot, or for ctx to end.
func (c *Compiler) acquire(ctx context.Context) error {
	select {
	case c.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for one of %d schema compilations to finish: %w", cap(c.slots), ctx.Err())
	}
}

func (c *Compiler) release() { <-c.slots }

// Compile compiles text within the compiler's limits (see CompileWithin).
func (c *Compiler) Compile(ctx context.Context, text string) (*Schema, error) {
	if err := c.acquire(ctx); err != nil {
		return nil, err
	}
	type result struct {
		s   *Schema
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer c.release()
		s, err := CompileWithin(ctx, text, c.limits)
		done <- result{s, err}
	}()
	select {
	case r := <-done:
		return r.s, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Admit checks text against the compiler's limits, without compiling it,
// and holds a slot until release is called: for a caller whose next step
// compiles text elsewhere (a store's schema write).
func (c *Compiler) Admit(ctx context.Context, text string) (release func(), err error) {
	if err := c.acquire(ctx); err != nil {
		return nil, err
	}
	if err := checkLimits(ctx, text, c.limits); err != nil {
		c.release()
		return nil, err
	}
	return c.release, nil
}
