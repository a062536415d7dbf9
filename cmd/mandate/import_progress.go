package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress follows a bulk command (import, export): a bar with the rate in
// relationships/s on a terminal, nothing otherwise; summary gives the
// one-line account printed at the end either way.
type progress struct {
	bar   *progressbar.ProgressBar // nil when not shown
	start time.Time
	n     int64
}

// newProgress starts following. With show false nothing is drawn. total is
// the number of relationships expected, or -1 when unknown (a spinner with
// the count and rate instead of a bar).
func newProgress(w io.Writer, show bool, total int64, description string) *progress {
	p := &progress{start: time.Now()}
	if !show {
		return p
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("relationships"),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)
	// Start the clock now: started by the first add, the bar would divide
	// that first batch by almost no time and show an absurd rate.
	p.bar.StartWithoutRender()
	p.bar.RenderBlank()
	return p
}

// add counts n more relationships.
func (p *progress) add(n int) {
	p.n += int64(n)
	if p.bar != nil {
		p.bar.Add(n)
	}
}

// done takes the bar out of the way of what follows: filled on success,
// left as it stands on failure. Later calls do nothing.
func (p *progress) done(ok bool) {
	bar := p.bar
	if bar == nil {
		return
	}
	p.bar = nil // once: a second call must not print another line
	if ok && bar.GetMax64() >= 0 {
		bar.Finish()
		return
	}
	bar.Exit()
}

// summary says how many relationships were moved, how long it took and the
// rate: "imported 100,000 relationships in 1.52s (65,789 relationships/s)".
func (p *progress) summary(verb string) string {
	d := time.Since(p.start)
	rate := ""
	if s := d.Seconds(); s > 0 {
		rate = fmt.Sprintf(" (%s relationships/s)", thousands(int64(float64(p.n)/s)))
	}
	return fmt.Sprintf("%s %s relationships in %s%s", verb, thousands(p.n), d.Round(time.Millisecond), rate)
}

// thousands renders n with comma separators: 1234567 -> "1,234,567".
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	out := make([]byte, 0, len(s)+len(s)/3+1)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// isTerminal reports whether w is a terminal, where a progress bar belongs
// (not a pipe, a file or a test's buffer).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
