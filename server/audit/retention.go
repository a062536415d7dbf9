package audit

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Retention bounds a file trail by age and total size. Only whole rotated
// files go, oldest first, and never the file being written: a trail may
// briefly hold one file more than the bounds allow. Zero fields keep
// everything.
type Retention struct {
	// MaxAge deletes a rotated file once its last record is older.
	MaxAge time.Duration
	// MaxBytes deletes the oldest rotated files while the trail is larger.
	MaxBytes int64
}

// Active reports whether the retention deletes anything.
func (r Retention) Active() bool { return r.MaxAge > 0 || r.MaxBytes > 0 }

func (r Retention) String() string {
	var parts []string
	if r.MaxAge > 0 {
		parts = append(parts, r.MaxAge.String())
	}
	if r.MaxBytes > 0 {
		parts = append(parts, strconv.FormatInt(r.MaxBytes, 10)+"B")
	}
	if len(parts) == 0 {
		return "keep everything"
	}
	return strings.Join(parts, ",")
}

// ageCheckInterval is how often an idle trail's files are checked for age.
const ageCheckInterval = time.Minute

// PrunePlan is what retention is about to delete: a prefix of the trail.
type PrunePlan struct {
	Files []string
	Bytes int64
	// ThroughSeq is the last record deleted and ThroughHash its hash, which
	// the first record kept names as its prev_hash.
	ThroughSeq  uint64
	ThroughHash string
	// Reason is age or size.
	Reason string
}

// Pruner is a sink that deletes old records under a retention policy. The
// Log records each plan in the trail (an audit_retention record, synced)
// before it calls Prune, so that Verify can tell a deleted prefix from a
// removed one.
type Pruner interface {
	// PlanPrune returns what the retention would delete now; false when
	// nothing. It is cheap when nothing is due.
	PlanPrune(now time.Time) (PrunePlan, bool, error)
	// Prune deletes the plan's files.
	Prune(p PrunePlan) error
}

// SetRetention sets the sink's retention; call it before the sink is used.
func (s *FileSink) SetRetention(r Retention) { s.retention = r }

// PlanPrune implements Pruner.
func (s *FileSink) PlanPrune(now time.Time) (PrunePlan, bool, error) {
	r := s.retention
	if !r.Active() {
		return PrunePlan{}, false, nil
	}
	ageDue := r.MaxAge > 0 && now.Sub(s.lastAgeCheck) >= ageCheckInterval
	if !s.pruneDue && !ageDue {
		return PrunePlan{}, false, nil
	}
	s.pruneDue = false
	if ageDue {
		s.lastAgeCheck = now
	}
	files, err := listTrail(s.dir)
	if err != nil {
		return PrunePlan{}, false, err
	}
	sizes := make([]int64, len(files))
	mtimes := make([]time.Time, len(files))
	var total int64
	for i, f := range files {
		st, err := os.Stat(f.path)
		if err != nil {
			return PrunePlan{}, false, fmt.Errorf("audit retention: %w", err)
		}
		sizes[i], mtimes[i] = st.Size(), st.ModTime()
		total += st.Size()
	}
	var plan PrunePlan
	// Never the newest file (the one being written), nor a file after it.
	for i := 0; i < len(files)-1 && files[i].path != s.current; i++ {
		bySize := r.MaxBytes > 0 && total-plan.Bytes > r.MaxBytes
		byAge := r.MaxAge > 0 && now.Sub(mtimes[i]) > r.MaxAge
		if !bySize && !byAge {
			break // only a prefix goes
		}
		if bySize {
			plan.Reason = "size"
		} else if plan.Reason == "" {
			plan.Reason = "age"
		}
		plan.Files = append(plan.Files, files[i].path)
		plan.Bytes += sizes[i]
	}
	if len(plan.Files) == 0 {
		return PrunePlan{}, false, nil
	}
	// The first file kept names the hash its first record follows.
	kept := files[len(plan.Files)]
	first, err := firstRecord(kept.path)
	if err != nil {
		return PrunePlan{}, false, err
	}
	if first == nil || first.Seq != kept.firstSeq || first.Seq < 2 {
		// Empty, or not the record its name says: keep everything for an
		// investigator (Verify reports the file).
		s.log.Warn("audit retention skipped: the first file to keep does not start where its name says", "file", kept.path)
		return PrunePlan{}, false, nil
	}
	plan.ThroughSeq, plan.ThroughHash = first.Seq-1, first.PrevHash
	return plan, true, nil
}

// Prune implements Pruner.
func (s *FileSink) Prune(p PrunePlan) error {
	var errs []error
	for _, path := range p.Files {
		if path == s.current {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("audit retention: %w", err))
			break // keep the trail a prefix-deleted chain
		}
	}
	if err := syncDir(s.dir); err != nil {
		errs = append(errs, err)
	}
	s.log.Info("audit retention deleted old files", "files", len(p.Files), "bytes", p.Bytes, "reason", p.Reason,
		"through_seq", p.ThroughSeq, "through_hash", p.ThroughHash)
	return errors.Join(errs...)
}

// firstRecord decodes a file's first line; nil when it has none.
func firstRecord(path string) (*Event, error) {
	var ev *Event
	var derr error
	_, err := scanFile(path, func(_ int, text []byte, _ bool) (bool, error) {
		ev, derr = Decode(text)
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("the first record of %s: %w", path, derr)
	}
	return ev, nil
}
