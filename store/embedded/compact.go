package embedded

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// compactTxSize bounds the data copied per transaction while compacting, so
// a large store is not copied in one transaction held in memory.
const compactTxSize = 64 << 20

// CompactResult is what Compact did.
type CompactResult struct {
	Before, After int64 // file sizes in bytes
}

// Compact rewrites the store in dir into a new file holding only live pages
// and puts it in place of the old one. bbolt reuses freed pages but never
// returns them to the file system, so a store that once held much more than
// it does now stays as large as it was.
//
// It must run while no server uses dir: it takes the same lock a server
// does (waiting at most lockTimeout) and holds it until the new file is in
// place. A server that started waiting for the lock meanwhile notices that
// the file it locked was replaced, and opens the new one (see Open). A crash
// at any point leaves either the old file or the new one, never a mix: the
// copy is made beside it and renamed over it.
func Compact(dir string, lockTimeout time.Duration) (CompactResult, error) {
	if lockTimeout <= 0 {
		lockTimeout = DefaultLockTimeout
	}
	path := filepath.Join(dir, FileName)
	info, err := os.Stat(path)
	if err != nil {
		return CompactResult{}, fmt.Errorf("compacting: no store in %s: %w", dir, err)
	}
	res := CompactResult{Before: info.Size()}
	src, err := openLocked(path, &bolt.Options{Timeout: lockTimeout, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return res, fmt.Errorf("data directory %s is %w (stop the server before compacting)", dir, ErrInUse)
	}
	if err != nil {
		return res, fmt.Errorf("compacting: opening %s: %w", path, err)
	}
	defer src.Close()

	tmp := path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("compacting: removing a stale %s: %w", tmp, err)
	}
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
	if err != nil {
		return res, fmt.Errorf("compacting: creating %s: %w", tmp, err)
	}
	if err := bolt.Compact(dst, src, compactTxSize); err != nil {
		dst.Close()
		os.Remove(tmp)
		return res, fmt.Errorf("compacting %s: %w", path, err)
	}
	// Each of Compact's transactions was synced on commit.
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return res, fmt.Errorf("compacting: closing %s: %w", tmp, err)
	}
	// Renamed while the old file is still locked: nobody can be writing it.
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return res, fmt.Errorf("compacting: replacing %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return res, fmt.Errorf("compacting: %w", err)
	}
	if info, err := os.Stat(path); err == nil {
		res.After = info.Size()
	}
	return res, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}
