package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxFileSize is the size at which a trail file is rotated.
const DefaultMaxFileSize = 100 << 20

// File names are audit-<first seq, 20 digits>.jsonl, so that name order is
// chain order and a missing file shows as a sequence gap.
const (
	filePrefix = "audit-"
	fileSuffix = ".jsonl"
)

func fileName(firstSeq uint64) string {
	return fmt.Sprintf("%s%020d%s", filePrefix, firstSeq, fileSuffix)
}

// trailFile is one file of a trail directory.
type trailFile struct {
	path     string
	firstSeq uint64
}

// listTrail returns a directory's trail files in chain order.
func listTrail(dir string) ([]trailFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing the audit trail: %w", err)
	}
	var out []trailFile
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, filePrefix) || !strings.HasSuffix(name, fileSuffix) {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, filePrefix), fileSuffix), 10, 64)
		if err != nil {
			continue
		}
		out = append(out, trailFile{path: filepath.Join(dir, name), firstSeq: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].firstSeq < out[j].firstSeq })
	return out, nil
}

// FileSink writes the trail as JSON lines in a directory, one chain across
// its files, rotating to a new file when the current one would grow past the
// maximum size. Lines are written with one write call per batch and synced
// at rotation and close: a process crash loses nothing written, a machine
// crash may lose the last batches (and leave a torn last line, which the
// sink and Verify recognise).
type FileSink struct {
	dir    string
	max    int64
	log    *slog.Logger
	unlock func() error

	f       *os.File
	size    int64
	rotate  bool // the next write starts a new file (torn tail)
	seq     uint64
	hash    string
	buf     []byte
	current string

	retention Retention
	// pruneDue is set when retention should look at the files again: at
	// open and after each rotation (size), and by lastAgeCheck (age).
	pruneDue     bool
	lastAgeCheck time.Time
}

// OpenFileSink opens (creating) a trail directory and locks it against a
// second writer. maxSize <= 0 means DefaultMaxFileSize.
func OpenFileSink(dir string, maxSize int64, log *slog.Logger) (*FileSink, error) {
	if strings.TrimSpace(dir) == "" {
		return nil, errors.New("audit directory: required")
	}
	if maxSize <= 0 {
		maxSize = DefaultMaxFileSize
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the audit directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &FileSink{dir: dir, max: maxSize, log: log, unlock: unlock, pruneDue: true}
	if err := s.resume(); err != nil {
		unlock()
		return nil, err
	}
	return s, nil
}

// resume finds the chain's head in the newest file holding a record.
func (s *FileSink) resume() error {
	files, err := listTrail(s.dir)
	if err != nil {
		return err
	}
	for i := len(files) - 1; i >= 0; i-- {
		last, torn, err := lastRecord(files[i].path)
		if err != nil {
			return err
		}
		if torn {
			s.rotate = true
			s.log.Warn("the audit trail ends in an incomplete record (a write was cut short); continuing in a new file", "file", files[i].path)
		}
		if last == nil {
			continue
		}
		ev, err := Decode(last)
		if err != nil {
			return fmt.Errorf("the last record of %s is not valid (%v): check the trail with `mandate audit verify %s`, and move the directory aside to start a new trail", files[i].path, err, s.dir)
		}
		s.seq, s.hash = ev.Seq, ev.Hash
		if !s.rotate {
			s.current = files[i].path
		}
		return nil
	}
	return nil
}

// lastRecord returns the last complete line of a file and whether an
// incomplete one follows it.
func lastRecord(path string) ([]byte, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, fmt.Errorf("opening the audit trail: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("reading the audit trail: %w", err)
	}
	size := st.Size()
	for window := int64(64 << 10); ; window *= 2 {
		start := max(size-window, 0)
		buf := make([]byte, size-start)
		if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
			return nil, false, fmt.Errorf("reading %s: %w", path, err)
		}
		torn := len(buf) > 0 && buf[len(buf)-1] != '\n'
		end := bytes.LastIndexByte(buf, '\n')
		if end < 0 {
			if start == 0 {
				return nil, torn, nil
			}
			continue
		}
		begin := bytes.LastIndexByte(buf[:end], '\n')
		if begin < 0 && start > 0 {
			continue // the line may start before the window
		}
		return buf[begin+1 : end], torn, nil
	}
}

// Describe implements Sink.
func (s *FileSink) Describe() string { return "file " + s.dir }

// Dir returns the trail directory.
func (s *FileSink) Dir() string { return s.dir }

// Head implements Sink.
func (s *FileSink) Head(context.Context) (uint64, string, error) { return s.seq, s.hash, nil }

// Write implements Sink. Records the sink already holds (a retried batch)
// are skipped; a failed write is truncated away.
func (s *FileSink) Write(_ context.Context, recs []Record) error {
	for len(recs) > 0 && recs[0].Event.Seq <= s.seq {
		recs = recs[1:]
	}
	for len(recs) > 0 {
		if s.f == nil || s.rotate || (s.size > 0 && s.size+int64(len(recs[0].Line)) > s.max) {
			if err := s.openNext(recs[0].Event.Seq, int64(len(recs[0].Line))); err != nil {
				return err
			}
		}
		n, total := 0, int64(0)
		for n < len(recs) && (n == 0 || s.size+total+int64(len(recs[n].Line)) <= s.max) {
			total += int64(len(recs[n].Line))
			n++
		}
		buf := s.buf[:0]
		for _, r := range recs[:n] {
			buf = append(buf, r.Line...)
		}
		s.buf = buf
		if _, err := s.f.Write(buf); err != nil {
			if terr := s.f.Truncate(s.size); terr != nil {
				// The file now ends in a partial batch: start afresh in a
				// new file, leaving the torn tail as evidence.
				s.rotate = true
			}
			return fmt.Errorf("writing %s: %w", s.current, err)
		}
		s.size += total
		last := recs[n-1].Event
		s.seq, s.hash = last.Seq, last.Hash
		recs = recs[n:]
	}
	return nil
}

// openNext continues in the current file after a restart when need more
// bytes fit, or starts the file whose first record is firstSeq.
func (s *FileSink) openNext(firstSeq uint64, need int64) error {
	if s.f == nil && !s.rotate && s.current != "" {
		f, err := os.OpenFile(s.current, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("opening the audit trail: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("opening the audit trail: %w", err)
		}
		s.f, s.size = f, st.Size()
		if s.size == 0 || s.size+need <= s.max {
			return nil
		}
	}
	if s.f != nil {
		if err := s.closeFile(); err != nil {
			return err
		}
		s.log.Info("audit file rotated", "file", s.current, "head_seq", s.seq, "head_hash", s.hash)
	}
	path := filepath.Join(s.dir, fileName(firstSeq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("creating an audit file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("creating an audit file: %w", err)
	}
	if st.Size() != 0 {
		f.Close()
		return fmt.Errorf("audit file %s already holds data but the chain head is seq %d: check the trail with `mandate audit verify %s`", path, s.seq, s.dir)
	}
	if err := syncDir(s.dir); err != nil {
		f.Close()
		return err
	}
	s.f, s.size, s.rotate, s.current = f, 0, false, path
	s.pruneDue = true
	return nil
}

// syncDir makes a directory's entries (a new or deleted file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing the audit directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing the audit directory: %w", err)
	}
	return nil
}

// Sync implements Syncer: it flushes the current file to stable storage.
func (s *FileSink) Sync() error {
	if s.f == nil {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", s.current, err)
	}
	return nil
}

func (s *FileSink) closeFile() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	if err != nil {
		return fmt.Errorf("closing %s: %w", s.current, err)
	}
	return nil
}

// Close implements Sink: it syncs and closes the file and unlocks the
// directory.
func (s *FileSink) Close() error {
	err := s.closeFile()
	if uerr := s.unlock(); err == nil && uerr != nil {
		err = fmt.Errorf("unlocking the audit directory: %w", uerr)
	}
	return err
}

// Query implements Querier over the directory.
func (s *FileSink) Query(ctx context.Context, q Query) (Page, error) {
	return QueryDir(ctx, s.dir, q)
}

// QueryDir answers a query over a trail directory (or one trail file). It
// reads the records as stored, without verifying the chain (Verify does).
// Cursors are sequence numbers.
func QueryDir(ctx context.Context, path string, q Query) (Page, error) {
	if err := q.Validate(); err != nil {
		return Page{}, err
	}
	var after uint64
	if q.After != "" {
		n, err := strconv.ParseUint(q.After, 10, 64)
		if err != nil {
			return Page{}, fmt.Errorf("after: %q is not a cursor returned by a file trail query", q.After)
		}
		after = n
	}
	files, err := trailPaths(path)
	if err != nil {
		return Page{}, err
	}
	needles := q.needles()
	var matched []*Event
	var sizes []int // stored bytes of each matched record
	more, pageBytes := false, 0
	err = scanFiles(ctx, files, func(_ string, _ int, line []byte) (bool, error) {
		for _, n := range needles {
			if !bytes.Contains(line, n) {
				return true, nil
			}
		}
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return true, nil // Verify reports it; a query skips it
		}
		if q.After != "" && ((!q.Descending && ev.Seq <= after) || (q.Descending && ev.Seq >= after)) {
			return true, nil
		}
		if !q.Match(&ev) {
			return true, nil
		}
		applyCaps(&ev) // a record written before the caps existed
		if !q.Descending {
			if len(matched) == q.Limit || (len(matched) > 0 && pageBytes+len(line) > MaxPageBytes) {
				more = true
				return false, nil
			}
			matched = append(matched, &ev)
			sizes = append(sizes, len(line))
			pageBytes += len(line)
			return true, nil
		}
		// Newest first: keep the last matches seen that fit the page.
		matched = append(matched, &ev)
		sizes = append(sizes, len(line))
		pageBytes += len(line)
		drop := 0
		for len(matched)-drop > q.Limit || (len(matched)-drop > 1 && pageBytes > MaxPageBytes) {
			pageBytes -= sizes[drop]
			drop++
			more = true
		}
		if drop > 0 {
			matched = append(matched[:0], matched[drop:]...)
			sizes = append(sizes[:0], sizes[drop:]...)
		}
		return true, nil
	})
	if err != nil {
		return Page{}, err
	}
	if q.Descending {
		for i, j := 0, len(matched)-1; i < j; i, j = i+1, j-1 {
			matched[i], matched[j] = matched[j], matched[i]
		}
	}
	p := Page{Events: matched}
	if more && len(matched) > 0 {
		p.Next = strconv.FormatUint(matched[len(matched)-1].Seq, 10)
	}
	return p, nil
}

// needles are byte strings a matching record's line must contain: cheap
// tests that spare decoding most records of a selective query.
func (q *Query) needles() [][]byte {
	var out [][]byte
	for _, v := range []string{q.Principal, q.Subject, q.Agent, q.Caller} {
		if v != "" {
			b, _ := json.Marshal(v)
			out = append(out, b)
		}
	}
	if strings.Contains(q.Resource, ":") {
		b, _ := json.Marshal(q.Resource)
		out = append(out, b)
	}
	return out
}

// trailPaths lists the files of a trail directory, or the one file given.
func trailPaths(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("audit trail: %w", err)
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	files, err := listTrail(path)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("audit trail %s: no %s*%s files", path, filePrefix, fileSuffix)
	}
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = f.path
	}
	return out, nil
}

// scanFiles calls fn with every line (without its newline) of the files, in
// order, with its 1-based line number, until fn returns false. A torn last
// line is passed too (a query's decoding skips it).
func scanFiles(ctx context.Context, files []string, fn func(file string, line int, text []byte) (bool, error)) error {
	for _, path := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		goOn, err := scanFile(path, func(n int, text []byte, _ bool) (bool, error) { return fn(path, n, text) })
		if err != nil {
			return err
		}
		if !goOn {
			return nil
		}
	}
	return nil
}

// scanFile calls fn with every line of a file, its number and whether it
// ended with a newline.
func scanFile(path string, fn func(n int, text []byte, complete bool) (bool, error)) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("audit trail: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	var long []byte
	for n := 1; ; n++ {
		text, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: collect it.
			long = append(long[:0], text...)
			for errors.Is(err, bufio.ErrBufferFull) {
				text, err = r.ReadSlice('\n')
				long = append(long, text...)
			}
			text = long
		}
		if len(text) == 0 && errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("reading %s: %w", path, err)
		}
		complete := err == nil
		goOn, ferr := fn(n, bytes.TrimSuffix(text, []byte{'\n'}), complete)
		if ferr != nil || !goOn {
			return goOn, ferr
		}
		if !complete {
			return true, nil
		}
	}
}
