package escalation

import (
	"crypto/sha256"
	"io"
	"os"
	"time"
)

// watcher notices changes to a rule file by polling: a stat per poll, and
// a read and hash only when the modification time or size moved. Polling
// needs no dependency and works wherever the file lives (a bind mount, a
// Kubernetes ConfigMap's symlink swap) where change notification may not.
type watcher struct {
	path string
	// mtime and size are the last stat seen; hash the last content
	// parsed, good or bad, so that one bad edit is logged once.
	mtime time.Time
	size  int64
	hash  [sha256.Size]byte
}

func newWatcher(path string, current *Rules) *watcher {
	w := &watcher{path: path, size: -1}
	if current != nil {
		w.hash = current.hash
	}
	return w
}

// poll returns the file's new rules, or the error it has, when its content
// changed since the last poll.
func (w *watcher) poll() (*Rules, bool, error) {
	fi, err := os.Stat(w.path)
	if err != nil {
		// A missing file is reported once, until it changes again.
		if w.size == -2 {
			return nil, false, nil
		}
		w.size, w.mtime = -2, time.Time{}
		return nil, true, err
	}
	if fi.ModTime().Equal(w.mtime) && fi.Size() == w.size {
		return nil, false, nil
	}
	f, err := os.Open(w.path)
	if err != nil {
		return nil, true, err
	}
	defer f.Close()
	text, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, true, err
	}
	w.mtime, w.size = fi.ModTime(), fi.Size()
	h := sha256.Sum256(text)
	if h == w.hash {
		return nil, false, nil
	}
	w.hash = h
	r, err := Parse(w.path, text)
	return r, true, err
}
