package escalation

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log sink the watcher writes to while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	write := func(text string) {
		t.Helper()
		// Through a rename, as editors and ConfigMaps replace files.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("rules: [{name: one}]\n")
	rs, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	e := New(rs, Options{PollInterval: 10 * time.Millisecond})
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		e.WatchFile(ctx, path, slog.New(slog.NewTextHandler(&logs, nil)))
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	names := func() string { return strings.Join(e.Rules().Names(), ",") }

	// A good file is swapped in.
	write("rules: [{name: two}, {name: three}]\n")
	waitFor(t, "the good file", func() bool { return names() == "two,three" })
	if got := escalated(t, e, check("document:d", "view")); got != "two" {
		t.Fatalf("after the reload: escalated by %q", got)
	}

	// A bad file keeps the rules in force and logs why, with the position.
	write("rules: [{name: four, max_duration: soon}]\n")
	waitFor(t, "the error logged", func() bool { return strings.Contains(logs.String(), "rules.yaml:1:36: max_duration") })
	if names() != "two,three" {
		t.Fatalf("after a bad file the rules are %q; want the old ones", names())
	}
	if !strings.Contains(logs.String(), "keeping the rules in force") {
		t.Fatalf("log: %s", logs.String())
	}

	// An empty file (a half-written one) is an error too, not "no rules".
	write("")
	waitFor(t, "the empty file logged", func() bool { return strings.Contains(logs.String(), "the file is empty") })
	if names() != "two,three" {
		t.Fatalf("after an empty file the rules are %q", names())
	}

	// A removed file keeps the rules; its return with good rules swaps.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the missing file logged", func() bool { return strings.Contains(logs.String(), "no such file") })
	write("rules: [{name: five}]\n")
	waitFor(t, "the file's return", func() bool { return names() == "five" })

	// One error is logged once, not on every poll.
	write("rules: [{name: six, bogus: 1}]\n")
	waitFor(t, "the unknown key logged", func() bool { return strings.Contains(logs.String(), `unknown key \"bogus\"`) })
	time.Sleep(100 * time.Millisecond)
	if n := strings.Count(logs.String(), `unknown key \"bogus\"`); n != 1 {
		t.Fatalf("the error was logged %d times; want once:\n%s", n, logs.String())
	}
}

// TestWatchFileUnchanged: rewriting the same rules swaps nothing.
func TestWatchFileUnchanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	text := []byte("rules: [{name: one}]\n")
	if err := os.WriteFile(path, text, 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	w := newWatcher(path, rs)
	if _, changed, err := w.poll(); changed {
		t.Fatalf("the file the rules came from: changed (%v)", err)
	}
	if err := os.Chtimes(path, time.Now(), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := w.poll(); changed {
		t.Fatalf("a touched file with the same content: changed (%v)", err)
	}
	if err := os.WriteFile(path, []byte("rules: [{name: two}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, time.Now(), time.Now().Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	r, changed, err := w.poll()
	if !changed || err != nil || r.Names()[0] != "two" {
		t.Fatalf("a changed file: %v, %v, %v", r.Names(), err, changed)
	}
}
