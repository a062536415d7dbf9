package server

import (
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
)

func TestNewRetention(t *testing.T) {
	cases := []struct {
		window             time.Duration
		wantWindow, wantIv time.Duration
		err                string
	}{
		{0, DefaultRevisionRetention, time.Minute, ""},
		{time.Hour, time.Hour, time.Minute, ""},
		{5 * time.Minute, 5 * time.Minute, 30 * time.Second, ""},
		{200 * time.Millisecond, 200 * time.Millisecond, 20 * time.Millisecond, ""},
		{time.Millisecond, time.Millisecond, 10 * time.Millisecond, ""},
		{-time.Second, 0, 0, "--revision-retention"},
	}
	for _, c := range cases {
		r, err := newRetention(c.window)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("newRetention(%v) = %v, want an error naming %s", c.window, err, c.err)
			}
			continue
		}
		if err != nil || r.window != c.wantWindow || r.interval != c.wantIv {
			t.Errorf("newRetention(%v) = %+v, %v; want window %v, interval %v", c.window, r, err, c.wantWindow, c.wantIv)
		}
	}
}

// TestRetentionObserve walks the sampling through time: history below a
// revision is released once the head had passed it a full window earlier,
// never sooner, and the head itself stays.
func TestRetentionObserve(t *testing.T) {
	r, err := newRetention(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		at     time.Duration // since t0
		head   store.Revision
		before store.Revision // 0: nothing to release
	}{
		{0, 5, 0},                                     // first sample: nothing is a window old
		{5 * time.Second, 7, 0},                       // head moved; still nothing a window old
		{9 * time.Second, 7, 0},                       // a repeated head adds no sample
		{10 * time.Second, 7, 5},                      // by t0 head was 5: below 5 goes
		{11 * time.Second, 9, 0},                      // the latest sample a window ago is still 5
		{14*time.Second + 999*time.Millisecond, 9, 0}, // t0+5s is not quite a window ago
		{15 * time.Second, 9, 7},                      // by t0+5s head was 7
		{20 * time.Second, 9, 0},                      // t0+10s also said 7
		{40 * time.Second, 9, 9},                      // no writes since t0+11s: below the head goes, the head stays
		{time.Hour, 9, 0},                             // nothing more to release
		{time.Hour + time.Second, 12, 0},              // a new write starts a new window
		{time.Hour + 11*time.Second, 12, 12},
	}
	for i, s := range steps {
		before, ok := r.observe(t0.Add(s.at), s.head)
		if want := s.before != 0; ok != want || (ok && before != s.before) {
			t.Fatalf("step %d (t0+%v, head %d): observe = %d, %v; want %d, %v", i, s.at, s.head, before, ok, s.before, want)
		}
	}
	if n := len(r.samples); n > 2 {
		t.Errorf("%d samples kept, want the old ones dropped", n)
	}

	// Samples stay few however many ticks pass: a tick per interval over a
	// long run keeps about window/interval of them.
	r, _ = newRetention(time.Second)
	for i := range 10_000 {
		r.observe(t0.Add(time.Duration(i)*r.interval), store.Revision(i))
	}
	if n := len(r.samples); n > 12 {
		t.Errorf("%d samples kept over a long run, want about window/interval", n)
	}
}
