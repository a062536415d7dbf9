// Package embedded is the durable store.Store that needs nothing installed:
// one bbolt file in a data directory, written in transactions that are
// fsynced before they are acknowledged, with multi-version history so that
// any retained revision can be read and watched. One process at a time may
// open a data directory.
package embedded

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
)

// FileName is the database file inside the data directory.
const FileName = "mandate.db"

// ErrClosed is returned by every method of a closed Store.
var ErrClosed = errors.New("embedded store is closed")

// ErrInUse is returned by Open when another process holds the data
// directory.
var ErrInUse = errors.New("in use by another mandate process")

// Defaults of Options' zero fields.
const (
	DefaultLockTimeout = 500 * time.Millisecond
	DefaultGCWindow    = 24 * time.Hour
	DefaultGCInterval  = 5 * time.Minute
)

// Options configures Open. Zero fields take the defaults above.
type Options struct {
	// LockTimeout bounds the wait for another process to release the data
	// directory before Open fails with ErrInUse.
	LockTimeout time.Duration
	// GCWindow is how long history stays readable and watchable: revisions
	// committed longer ago are forgotten by garbage collection.
	GCWindow time.Duration
	// GCInterval is how often garbage collection runs in the background;
	// negative disables it (CollectGarbage can still be called).
	GCInterval time.Duration
	// Now is the clock deciding expiration and the GC window (tests).
	Now func() time.Time
	// Logger receives garbage collection reports; nil discards them.
	Logger *slog.Logger
}

// Store is the embedded store. Create it with Open.
type Store struct {
	db   *bolt.DB
	dir  string
	id   string
	opts Options

	// head caches the latest committed revision; it only grows, and only
	// after the commit is durable, so a Head result is always readable.
	head atomic.Uint64

	mu     sync.Mutex
	closed bool
	// wake is closed and replaced after every commit (and closed on Close)
	// so that watchers wait without polling.
	wake chan struct{}
	// schema caches the latest schema, compiled.
	schema *schemaVersion

	// writes feeds the committer; closing ends it.
	writes        chan *writeOp
	closing       chan struct{}
	committerDone chan struct{}

	stopGC context.CancelFunc
	gcDone chan struct{}
}

// writeOp is one write waiting for the committer.
type writeOp struct {
	fn   func(*bolt.Tx) error
	done chan error
}

// maxGroup bounds how many waiting writes share one transaction.
const maxGroup = 128

type schemaVersion struct {
	rev      store.Revision
	compiled *schema.Schema
}

var (
	_ store.Store           = (*Store)(nil)
	_ store.HistoryReleaser = (*Store)(nil)
)

// Open opens the store in dir, creating the directory and an empty store
// (with a new random identity) when there is none.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("embedded store: data directory is empty; expected a directory path")
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if opts.GCWindow <= 0 {
		opts.GCWindow = DefaultGCWindow
	}
	if opts.GCInterval == 0 {
		opts.GCInterval = DefaultGCInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	// bbolt's defaults fsync every commit (and the file when it grows):
	// an acknowledged write survives a crash. The 1 GiB initial mapping is
	// address space, not memory: it spares a growing store the remaps that
	// would otherwise stall a large write and wait for every reader. The
	// hashmap freelist stays fast when a large file's free pages fragment.
	db, err := openLocked(path, &bolt.Options{
		Timeout:         opts.LockTimeout,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: 1 << 30,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("data directory %s is %w (%s stayed locked for %v; stop that process or use another directory)", dir, ErrInUse, path, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("opening embedded store %s: %w", path, err)
	}
	s := &Store{
		db: db, dir: dir, opts: opts, wake: make(chan struct{}),
		writes: make(chan *writeOp), closing: make(chan struct{}), committerDone: make(chan struct{}),
	}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening embedded store %s: %w", path, err)
	}
	go s.commitLoop()
	if opts.GCInterval > 0 {
		gcCtx, cancel := context.WithCancel(context.Background())
		s.stopGC, s.gcDone = cancel, make(chan struct{})
		go s.gcLoop(gcCtx)
	}
	return s, nil
}

// openLocked opens and locks the bbolt file at path. Compact may rename a
// new file over the one this process is waiting to lock; the lock would
// then be on a file nobody reads again, so when the path named another file
// after the lock was taken than before, it opens the new one. (Compactions
// make new files, so a path that names the same file before and after
// named it throughout.)
func openLocked(path string, opts *bolt.Options) (*bolt.DB, error) {
	for {
		before, statErr := os.Stat(path)
		db, err := bolt.Open(path, 0o600, opts)
		if err != nil {
			return nil, err
		}
		after, err := os.Stat(path)
		if err != nil {
			db.Close()
			return nil, err
		}
		if statErr == nil && !os.SameFile(before, after) {
			db.Close()
			continue
		}
		return db, nil
	}
}

// init creates the buckets and identity of a new store, or checks those of
// an existing one, and loads the head and the current schema.
func (s *Store) init(ctx context.Context) error {
	var head store.Revision
	var schemaText string
	var schemaRev store.Revision
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketRels, bucketChanges, bucketSchemas, bucketExpiry} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if id := meta.Get(metaID); id != nil {
			format := meta.Get(metaFormat)
			if len(format) != 8 || binaryU64(format) != formatVersion {
				return fmt.Errorf("unsupported data format %x; this mandate reads format %d", format, formatVersion)
			}
			s.id = string(id)
		} else {
			id, err := newUUID()
			if err != nil {
				return err
			}
			s.id = id
			for k, v := range map[string][]byte{
				string(metaID): []byte(id), string(metaFormat): u64(formatVersion),
				string(metaHead): u64(0), string(metaOldest): u64(0),
			} {
				if err := meta.Put([]byte(k), v); err != nil {
					return err
				}
			}
		}
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		head = m.head
		if k, v := tx.Bucket(bucketSchemas).Cursor().Last(); k != nil {
			schemaRev, schemaText = store.Revision(binaryU64(k)), string(v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.head.Store(uint64(head))
	if schemaRev > 0 {
		compiled, err := schema.Compile(ctx, schemaText)
		if err != nil {
			return fmt.Errorf("compiling the stored schema of revision %d: %w", schemaRev, err)
		}
		s.schema = &schemaVersion{rev: schemaRev, compiled: compiled}
	}
	return nil
}

// newUUID draws a random (version 4) UUID.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("drawing a store identity: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// ID returns the store's identity: a random UUID drawn when the data
// directory was created, stable across restarts, so revision tokens issued
// before a restart stay valid after it.
func (s *Store) ID() string { return s.id }

// Head returns the latest committed revision.
func (s *Store) Head(ctx context.Context) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.isClosed() {
		return 0, ErrClosed
	}
	return store.Revision(s.head.Load()), nil
}

// Close stops garbage collection, ends every watch and closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.wake)
	s.mu.Unlock()
	if s.stopGC != nil {
		s.stopGC()
		<-s.gcDone
	}
	close(s.closing)
	<-s.committerDone
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing embedded store %s: %w", s.dir, err)
	}
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// wakeChan returns the channel the next commit closes.
func (s *Store) wakeChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wake
}

// committed publishes a durable revision: Head moves and watchers wake.
func (s *Store) committed(rev store.Revision) {
	for {
		cur := s.head.Load()
		if uint64(rev) <= cur || s.head.CompareAndSwap(cur, uint64(rev)) {
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		close(s.wake)
		s.wake = make(chan struct{})
	}
}

// view runs fn in a read transaction, reporting ErrClosed for a closed store.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	if s.isClosed() {
		return ErrClosed
	}
	err := s.db.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// update runs fn in a write transaction, committed (and fsynced) when fn
// returns nil, and returns once the commit is durable. fn may share its
// transaction with other writes (group commit: one fsync for all that
// waited) and may run more than once, so it must derive everything it
// records from the transaction.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	if s.isClosed() {
		return ErrClosed
	}
	op := &writeOp{fn: fn, done: make(chan error, 1)}
	select {
	case s.writes <- op:
	case <-s.closing:
		return ErrClosed
	}
	return <-op.done
}

// commitLoop is the one writer: it takes every write waiting (up to
// maxGroup) into one transaction, so that concurrent writers share an
// fsync instead of queueing for one each.
func (s *Store) commitLoop() {
	defer close(s.committerDone)
	for {
		var group []*writeOp
		select {
		case op := <-s.writes:
			group = append(group, op)
		case <-s.closing:
			return
		}
	gather:
		for len(group) < maxGroup {
			select {
			case op := <-s.writes:
				group = append(group, op)
			default:
				break gather
			}
		}
		s.commitGroup(group)
	}
}

// commitGroup applies the writes in order in one transaction. A write that
// fails is answered with its error and the transaction is rolled back and
// retried without it, since bbolt has no savepoints: the others behave as if
// each had run alone, in order.
func (s *Store) commitGroup(group []*writeOp) {
	for len(group) > 0 {
		failed := -1
		var failure error
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, op := range group {
				if err := op.fn(tx); err != nil {
					failed, failure = i, err
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			group[failed].done <- failure
			group = append(group[:failed], group[failed+1:]...)
			continue
		}
		if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
			err = ErrClosed
		}
		for _, op := range group {
			op.done <- err
		}
		return
	}
}

// meta is the store's position, read inside a transaction.
type meta struct {
	head, oldest store.Revision
}

func readMeta(tx *bolt.Tx) (meta, error) {
	b := tx.Bucket(bucketMeta)
	h, o := b.Get(metaHead), b.Get(metaOldest)
	if len(h) != 8 || len(o) != 8 {
		return meta{}, fmt.Errorf("%w: missing head or oldest revision", errCorrupt)
	}
	return meta{head: store.Revision(binaryU64(h)), oldest: store.Revision(binaryU64(o))}, nil
}

func putMeta(tx *bolt.Tx, key []byte, rev store.Revision) error {
	return tx.Bucket(bucketMeta).Put(key, revKey(rev))
}

// readable checks that rev can be read in a transaction whose position is m.
func (m meta) readable(rev store.Revision) error {
	switch {
	case rev > m.head:
		return fmt.Errorf("%w: revision %d, head is %d", store.ErrFutureRevision, rev, m.head)
	case rev < m.oldest:
		return fmt.Errorf("%w: revision %d, oldest retained is %d", store.ErrRevisionGone, rev, m.oldest)
	}
	return nil
}
