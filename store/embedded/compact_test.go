package embedded_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/rel"
)

// TestCompact fills a store, deletes most of it and collects its history,
// then compacts it: the file shrinks, and everything a reader could see
// before (relationships, schema, head, identity, the change stream still
// retained) is the same after. Compacting a directory a store holds open is
// refused.
func TestCompact(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, embedded.Options{GCInterval: -1, GCWindow: time.Nanosecond})
	if _, err := s.WriteSchema(t.Context(), testSchema); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := 0; i < 20_000; i++ {
		lines = append(lines, fmt.Sprintf("doc:d%05d#owner@user:u%05d", i, i))
	}
	mustWrite(t, s, store.Touch, lines...)
	var dels []store.Mutation
	for _, line := range lines[100:] {
		r, err := rel.Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		dels = append(dels, store.Mutation{Op: store.Delete, Rel: r})
	}
	head, err := s.Write(t.Context(), nil, dels)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // past the GC window
	if _, err := s.CollectGarbage(t.Context()); err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	before := mustRead(t, s, head, rel.Filter{})

	if _, err := embedded.Compact(dir, 100*time.Millisecond); !errors.Is(err, embedded.ErrInUse) {
		t.Fatalf("Compact while open: %v, want ErrInUse", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := embedded.Compact(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.After >= res.Before/2 {
		t.Fatalf("compacted from %d to %d bytes; want well under half", res.Before, res.After)
	}
	if info, err := os.Stat(filepath.Join(dir, embedded.FileName)); err != nil || info.Size() != res.After {
		t.Fatalf("file after compacting: %v, %v; want %d bytes", info, err, res.After)
	}
	if _, err := os.Stat(filepath.Join(dir, embedded.FileName+".compact")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the temporary copy is left behind: %v", err)
	}

	s = open(t, dir, embedded.Options{GCInterval: -1})
	if s.ID() != id {
		t.Fatalf("identity changed: %q, then %q", id, s.ID())
	}
	if h, err := s.Head(t.Context()); err != nil || h != head {
		t.Fatalf("head after compacting: %d, %v; want %d", h, err, head)
	}
	if after := mustRead(t, s, head, rel.Filter{}); !slices.Equal(after, before) || len(after) != 100 {
		t.Fatalf("relationships after compacting: %d, want the same %d", len(after), len(before))
	}
	if text, _, err := s.ReadSchema(t.Context(), head); err != nil || text != testSchema {
		t.Fatalf("schema after compacting: %q, %v", text, err)
	}
	if next := mustWrite(t, s, store.Touch, "doc:new#owner@user:ann"); next != head+1 {
		t.Fatalf("first write after compacting got revision %d, want %d", next, head+1)
	}
}

// TestOpenFollowsCompaction checks that a store opened while Compact holds
// the directory ends up on the compacted file, not on the replaced one:
// writes it accepts must be in the file the next process reads.
func TestOpenFollowsCompaction(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, embedded.Options{})
	if _, err := s.WriteSchema(t.Context(), testSchema); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := 0; i < 5_000; i++ {
		lines = append(lines, fmt.Sprintf("doc:d%05d#owner@user:u%05d", i, i))
	}
	mustWrite(t, s, store.Touch, lines...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 5; round++ {
		opened := make(chan *embedded.Store, 1)
		failed := make(chan error, 1)
		compacted := make(chan error, 1)
		go func() {
			_, err := embedded.Compact(dir, 5*time.Second)
			compacted <- err
		}()
		go func() {
			st, err := embedded.Open(t.Context(), dir, embedded.Options{LockTimeout: 5 * time.Second})
			if err != nil {
				failed <- err
				return
			}
			opened <- st
		}()
		var st *embedded.Store
		select {
		case st = <-opened:
		case err := <-failed:
			t.Fatal(err)
		}
		line := fmt.Sprintf("doc:round%d#owner@user:ann", round)
		mustWrite(t, st, store.Touch, line)
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-compacted; err != nil && !errors.Is(err, embedded.ErrInUse) {
			t.Fatal(err)
		}
		check := open(t, dir, embedded.Options{})
		head, err := check.Head(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if got := mustRead(t, check, head, rel.Filter{ResourceType: "doc", ResourceIDs: []string{fmt.Sprintf("round%d", round)}}); len(got) != 1 {
			t.Fatalf("round %d: the write made while compacting is lost: %q", round, got)
		}
		if err := check.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
