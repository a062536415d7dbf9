package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sink persists encoded records, in order. A Log is its only writer.
type Sink interface {
	// Head returns the sequence number and hash of the last record the sink
	// holds (0 and "" when empty), so that a restarted Log continues the
	// chain.
	Head(ctx context.Context) (seq uint64, hash string, err error)
	// Write appends records atomically: on error none of them is kept, so
	// the Log can retry the batch.
	Write(ctx context.Context, recs []Record) error
	// Close releases the sink.
	Close() error
	// Describe names the sink for logs ("file /var/lib/mandate/audit").
	Describe() string
}

// Syncer is a sink whose writes reach stable storage only when synced (a
// file). RecordDurable syncs it after the batch holding its event is
// written; a sink without Sync is durable once Write returns (a committed
// PostgreSQL transaction) or never more durable than that (a writer).
type Syncer interface {
	Sync() error
}

// Querier is a sink that can answer queries over what it holds.
type Querier interface {
	Query(ctx context.Context, q Query) (Page, error)
}

// Record is one encoded event.
type Record struct {
	Event *Event
	// Line is the record's JSON with a trailing newline. It is valid only
	// during the Write call it is passed to.
	Line []byte
}

// Overflow is what Record does when the queue is full.
type Overflow string

// Overflow policies.
const (
	// Block waits for room (backpressure): the request waits, and fails
	// when its deadline passes first, so nothing is answered unaudited.
	Block Overflow = "block"
	// Drop discards the event, counts it (metric and log) and writes an
	// audit_events_dropped record with the count into the trail.
	Drop Overflow = "drop"
)

// ParseOverflow parses an overflow policy name.
func ParseOverflow(s string) (Overflow, error) {
	switch Overflow(s) {
	case Block, Drop:
		return Overflow(s), nil
	}
	return "", fmt.Errorf("audit overflow policy %q: expected block or drop", s)
}

// Options configure a Log.
type Options struct {
	Sink Sink
	// Buffer is the queue capacity in events (default 8192).
	Buffer int
	// Overflow is the policy when the queue is full (default Block).
	Overflow Overflow
	// BatchSize bounds the events written at once (default 1024).
	BatchSize int
	// Linger is how long the writer lets events gather after a batch that
	// was not full (default 1ms; negative: none). Without it the writer
	// would be woken for every event of a steady stream, which costs more
	// CPU than encoding the event.
	Linger time.Duration
	// Redactor redacts context values; nil redacts nothing.
	Redactor *Redactor
	// Logger receives write failures and losses; nil discards.
	Logger *slog.Logger
	// ChainID is written in every record when set; by default the sink's
	// own (a PostgreSQL table holds one chain per server, stdout one per
	// run).
	ChainID string
	// SyncAll makes Record durable too (as RecordDurable), for checks and
	// lookups: each waits for the sync of its batch.
	SyncAll bool
	// StuckWrite is how long one sink write may take before Flush treats
	// the sink as failing (default 5s): a hung sink fails a flush at once
	// rather than at the flush's deadline.
	StuckWrite time.Duration
	// SyncInterval is how often the writer syncs a Syncer sink holding
	// asynchronous records not yet synced (default 1s): what a machine
	// crash can lose of them, besides the queue.
	SyncInterval time.Duration
	// AbortWait bounds how long Close waits, once its context has ended,
	// for a writer stuck in the sink and then for the sink to close
	// (default 1s). Close returns within its context's deadline plus
	// AbortWait even when the sink hangs.
	AbortWait time.Duration
}

// ErrClosed is returned by Record after Close.
var ErrClosed = errors.New("audit log closed")

// item is a queued event or a flush request (which, queued behind the
// events recorded before it, is answered once they are written). durable,
// when set, receives the outcome once the event's batch is written and
// synced.
type item struct {
	ev      *Event
	flush   chan struct{}
	durable chan error
}

// Log writes events to a sink asynchronously, in batches, continuing the
// sink's hash chain. Create it with New; it is safe for concurrent use.
type Log struct {
	opts Options
	log  *slog.Logger
	ch   chan item

	// mu orders Record against Close: Record holds it shared while
	// enqueueing, so Close never misses an event already accepted.
	mu     sync.RWMutex
	closed bool
	done   chan struct{} // writer exited
	stop   chan struct{} // Close asks the writer to drain and exit
	abort  chan struct{} // Close's deadline passed: stop retrying
	// abortCtx is the context of sink writes, cancelled with abort.
	abortCtx    context.Context
	cancelWrite context.CancelFunc

	// failing is set while the writer retries a failing sink: Flush then
	// fails at once instead of waiting out the outage.
	failing atomic.Bool
	// lastErr is the sink's latest write error, for the callers told it
	// is failing.
	lastErr atomic.Value // error
	// writingSince is when the sink write in progress began (unix nanos;
	// 0: none).
	writingSince atomic.Int64

	seq  uint64 // writer goroutine only
	prev string // writer goroutine only
	buf  []byte // writer goroutine only: the encoded batch
	// unsynced is set when records were written since the last sync
	// (writer goroutine only).
	unsynced bool

	pendingDrops atomic.Int64 // dropped since the last dropped record
	lastDropLog  atomic.Int64 // unix nanos of the last drop log line

	written   prometheus.Counter
	dropped   *prometheus.CounterVec
	writeErrs prometheus.Counter
	queue     prometheus.GaugeFunc
}

// New opens a Log over opts.Sink, continuing its chain, and starts the
// writer. Close it to flush and release the sink.
func New(ctx context.Context, opts Options) (*Log, error) {
	if opts.Sink == nil {
		return nil, errors.New("audit: a sink is required")
	}
	if opts.Buffer <= 0 {
		opts.Buffer = 8192
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1024
	}
	if opts.Overflow == "" {
		opts.Overflow = Block
	}
	if opts.Linger == 0 {
		opts.Linger = time.Millisecond
	}
	if opts.AbortWait <= 0 {
		opts.AbortWait = time.Second
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = time.Second
	}
	if opts.StuckWrite <= 0 {
		opts.StuckWrite = 5 * time.Second
	}
	if _, err := ParseOverflow(string(opts.Overflow)); err != nil {
		return nil, err
	}
	if c, ok := opts.Sink.(interface{ ChainID() string }); ok && opts.ChainID == "" {
		opts.ChainID = c.ChainID()
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	seq, prev, err := opts.Sink.Head(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the head of the audit trail (%s): %w", opts.Sink.Describe(), err)
	}
	l := &Log{
		opts: opts, log: lg,
		ch:    make(chan item, opts.Buffer),
		done:  make(chan struct{}),
		stop:  make(chan struct{}),
		abort: make(chan struct{}),
		seq:   seq, prev: prev,
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "audit", Name: "events_written_total",
			Help: "Audit events written to the sink.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "audit", Name: "events_dropped_total",
			Help: "Audit events lost, by reason: queue_full (the drop policy), deadline (a request's deadline passed while the block policy waited), closed, write_failed (the sink failed through shutdown).",
		}, []string{"reason"}),
		writeErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "audit", Name: "write_errors_total",
			Help: "Failed attempts to write a batch of audit events (each is retried).",
		}),
	}
	l.queue = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mandate", Subsystem: "audit", Name: "queue_length",
		Help: "Audit events waiting to be written.",
	}, func() float64 { return float64(len(l.ch)) })
	l.abortCtx, l.cancelWrite = context.WithCancel(context.Background())
	go l.run()
	lg.Info("audit trail", "sink", opts.Sink.Describe(), "overflow", string(opts.Overflow), "buffer", opts.Buffer, "head_seq", seq)
	return l, nil
}

// Describe implements prometheus.Collector.
func (l *Log) Describe(ch chan<- *prometheus.Desc) {
	l.written.Describe(ch)
	l.dropped.Describe(ch)
	l.writeErrs.Describe(ch)
	l.queue.Describe(ch)
}

// Collect implements prometheus.Collector.
func (l *Log) Collect(ch chan<- prometheus.Metric) {
	l.written.Collect(ch)
	l.dropped.Collect(ch)
	l.writeErrs.Collect(ch)
	l.queue.Collect(ch)
}

// Record queues ev (which the Log owns from then on) and stamps its time
// when unset. When the queue is full, Block waits until there is room or ctx
// ends (then the event is counted lost and an error returned, so the caller
// can refuse to answer unaudited); Drop discards it, counted. It returns
// ErrClosed after Close.
func (l *Log) Record(ctx context.Context, ev *Event) error {
	if l.opts.SyncAll {
		return l.RecordDurable(ctx, ev)
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.lose("closed", 1)
		return ErrClosed
	}
	select {
	case l.ch <- item{ev: ev}:
		return nil
	default:
	}
	if l.opts.Overflow == Drop {
		l.lose("queue_full", 1)
		return nil
	}
	select {
	case l.ch <- item{ev: ev}:
		return nil
	case <-ctx.Done():
		l.lose("deadline", 1)
		return fmt.Errorf("audit trail full (%d events queued) and the request ended waiting for room: %w", cap(l.ch), ctx.Err())
	}
}

// RecordDurable queues evs like Record and returns once the batch holding
// the last of them is written and synced to the sink (and with it every
// record before it), so that a caller acknowledging a write after it knows
// the write's records survive a crash. Concurrent callers share batches and
// so share each sync (group commit). The queue's overflow policy does not
// apply: a full queue always blocks. An error (ctx ended, or the sink
// failed through shutdown) means the events may not be durable; the caller
// should fail its call rather than acknowledge it.
func (l *Log) RecordDurable(ctx context.Context, evs ...*Event) error {
	if len(evs) == 0 {
		return nil
	}
	now := time.Now().UTC()
	for _, ev := range evs {
		if ev.Time.IsZero() {
			ev.Time = now
		}
	}
	done := make(chan error, 1)
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		l.lose("closed", len(evs))
		return ErrClosed
	}
	for i, ev := range evs {
		it := item{ev: ev}
		if i == len(evs)-1 {
			it.durable = done
		}
		select {
		case l.ch <- it:
		case <-ctx.Done():
			l.mu.RUnlock()
			l.lose("deadline", len(evs)-i)
			return fmt.Errorf("audit trail full (%d events queued) and the request ended waiting for room: %w", cap(l.ch), ctx.Err())
		}
	}
	l.mu.RUnlock()
	// While the sink fails (a full disk, a lost database) the wait could
	// last as long as the outage: the caller is told at once, with the
	// cause. The events stay queued and are written once the sink
	// recovers; only their durability before the answer is lost.
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return fmt.Errorf("waiting for the audit records to be synced: %w", ctx.Err())
		case <-poll.C:
			if err := l.sinkFailing(); err != nil {
				return fmt.Errorf("the audit records could not be synced: %w", err)
			}
		}
	}
}

// lose counts lost events, logs at most one line a second about them, and
// (except for losses at close) has the writer record the loss in the trail.
func (l *Log) lose(reason string, n int) {
	l.dropped.WithLabelValues(reason).Add(float64(n))
	if reason != "closed" && reason != "write_failed" {
		l.pendingDrops.Add(int64(n))
	}
	now := time.Now().UnixNano()
	last := l.lastDropLog.Load()
	if now-last >= int64(time.Second) && l.lastDropLog.CompareAndSwap(last, now) {
		l.log.Warn("audit events lost; see mandate_audit_events_dropped_total", "reason", reason, "events", n, "overflow", string(l.opts.Overflow), "queue", cap(l.ch))
	}
}

// ErrSinkFailing is returned by Flush while the sink is failing: the writer
// is retrying, and waiting for it could last as long as the outage.
var ErrSinkFailing = errors.New("the audit sink is failing; its writer is retrying")

// sinkFailing returns ErrSinkFailing, with the sink's latest error, while
// the writer retries a failing sink or a write has been stuck for longer
// than Options.StuckWrite; nil otherwise.
func (l *Log) sinkFailing() error {
	since := l.writingSince.Load()
	if !l.failing.Load() && (since == 0 || time.Since(time.Unix(0, since)) <= l.opts.StuckWrite) {
		return nil
	}
	cause := "a write is stuck"
	if err, _ := l.lastErr.Load().(error); err != nil && l.failing.Load() {
		cause = err.Error()
	}
	return fmt.Errorf("%s (%s): %w", cause, l.opts.Sink.Describe(), ErrSinkFailing)
}

// Flush waits until every event recorded before it is written, or ctx ends.
// It fails at once with ErrSinkFailing while the sink is failing or stuck
// in a write for longer than Options.StuckWrite.
func (l *Log) Flush(ctx context.Context) error {
	if err := l.sinkFailing(); err != nil {
		return fmt.Errorf("flushing the audit trail: %w", err)
	}
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return ErrClosed
	}
	done := make(chan struct{})
	select {
	case l.ch <- item{flush: done}:
	case <-ctx.Done():
		l.mu.RUnlock()
		return fmt.Errorf("flushing the audit trail: %w", ctx.Err())
	}
	l.mu.RUnlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flushing the audit trail: %w", ctx.Err())
	}
}

// Close writes what is queued (retrying a failing sink until ctx ends, then
// counting and logging what could not be written), stops the writer and
// closes the sink. It returns by ctx's deadline plus Options.AbortWait
// however the sink behaves: a sink still stuck in a write by then is left
// open (the process is exiting), and the error says so.
func (l *Log) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	var err error
	var hard <-chan time.Time
	select {
	case <-l.done:
	case <-ctx.Done():
		// Let the writer give up on a failing sink (counting and logging
		// what it could not write) and wait a little for it.
		err = fmt.Errorf("closing the audit trail: %w", ctx.Err())
		close(l.abort)
		l.cancelWrite()
		hard = time.After(l.opts.AbortWait)
		select {
		case <-l.done:
		case <-hard:
			l.log.Error("audit sink still stuck in a write after the shutdown deadline; leaving it open", "sink", l.opts.Sink.Describe(),
				"lost_queued_events", len(l.ch))
			return fmt.Errorf("closing the audit trail: the %s sink is stuck in a write: %w", l.opts.Sink.Describe(), ctx.Err())
		}
	}
	l.cancelWrite()
	if hard == nil {
		hard = time.After(l.opts.AbortWait + time.Until(deadlineOr(ctx, time.Now())))
	}
	closed := make(chan error, 1)
	go func() { closed <- l.opts.Sink.Close() }()
	select {
	case cerr := <-closed:
		if cerr != nil && err == nil {
			err = fmt.Errorf("closing the audit sink: %w", cerr)
		}
	case <-hard:
		if err == nil {
			err = fmt.Errorf("closing the audit sink %s: did not return in time", l.opts.Sink.Describe())
		}
	}
	l.log.Info("audit trail closed", "sink", l.opts.Sink.Describe(), "head_seq", l.seq, "head_hash", l.prev)
	return err
}

// deadlineOr returns ctx's deadline, or def when it has none.
func deadlineOr(ctx context.Context, def time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return def
}

// Query flushes what was recorded so far and asks the sink.
func (l *Log) Query(ctx context.Context, q Query) (Page, error) {
	qr, ok := l.opts.Sink.(Querier)
	if !ok {
		return Page{}, fmt.Errorf("%w: the %s sink cannot be queried; query the trail where it is collected", ErrNotQueryable, l.opts.Sink.Describe())
	}
	if err := l.Flush(ctx); err != nil {
		return Page{}, err
	}
	return qr.Query(ctx, q)
}

// ErrNotQueryable is returned by Query on a sink that cannot be read back.
var ErrNotQueryable = errors.New("audit trail not queryable")

// Sink returns the Log's sink.
func (l *Log) Sink() Sink { return l.opts.Sink }

func (l *Log) run() {
	defer close(l.done)
	batch := make([]item, 0, l.opts.BatchSize)
	var linger *time.Timer
	if l.opts.Linger > 0 {
		linger = time.NewTimer(l.opts.Linger)
		linger.Stop()
	}
	// Asynchronous records reach stable storage within SyncInterval: the
	// loss window of a machine crash.
	var syncTick <-chan time.Time
	if _, ok := l.opts.Sink.(Syncer); ok {
		t := time.NewTicker(l.opts.SyncInterval)
		defer t.Stop()
		syncTick = t.C
	}
	l.prune() // what was due while the server was down
	for {
		batch = batch[:0]
		select {
		case it := <-l.ch:
			batch = append(batch, it)
		case <-syncTick:
			if l.unsynced {
				if err := l.sync(l.stop); err != nil {
					l.log.Error("syncing the audit trail", "error", err)
				}
			}
			l.prune() // files age on an idle trail too
			continue
		case <-l.stop:
			l.drainAndExit(batch)
			return
		}
		batch = l.fill(batch)
		l.writeBatch(batch, l.stop)
		l.prune()
		if linger != nil && len(batch) < cap(batch) {
			linger.Reset(l.opts.Linger)
			select {
			case <-linger.C:
			case <-l.stop:
				linger.Stop()
			}
		}
	}
}

// prune applies a Pruner sink's retention: it records the plan in the
// trail, durably, and only then deletes, so that a crash in between leaves
// a record claiming a deletion that did not happen (harmless), never a
// deletion without its record.
func (l *Log) prune() {
	p, ok := l.opts.Sink.(Pruner)
	if !ok {
		return
	}
	plan, ok, err := p.PlanPrune(time.Now())
	if err != nil {
		l.log.Error("audit retention", "sink", l.opts.Sink.Describe(), "error", err)
		return
	}
	if !ok {
		return
	}
	done := make(chan error, 1)
	ev := &Event{Time: time.Now().UTC(), Operation: OpRetention, Decision: OK, Count: int64(plan.ThroughSeq),
		Detail: plan.ThroughHash, Reason: plan.Reason}
	l.writeBatch([]item{{ev: ev, durable: done}}, l.stop)
	if err := <-done; err != nil {
		l.log.Error("audit retention postponed: its record could not be written", "error", err)
		return
	}
	if err := p.Prune(plan); err != nil {
		l.log.Error("audit retention", "sink", l.opts.Sink.Describe(), "error", err)
	}
}

// fill adds what is already queued, up to the batch size.
func (l *Log) fill(batch []item) []item {
	for len(batch) < cap(batch) {
		select {
		case it := <-l.ch:
			batch = append(batch, it)
		default:
			return batch
		}
	}
	return batch
}

// drainAndExit writes everything still queued at Close. No Record can add
// to the queue any more (Close holds the lock while setting closed).
func (l *Log) drainAndExit(batch []item) {
	for {
		batch = l.fill(batch[:0])
		if len(batch) == 0 && l.pendingDrops.Load() == 0 {
			l.prune()
			return
		}
		l.writeBatch(batch, nil) // an empty batch still records a loss
	}
}

// writeBatch encodes and writes a batch, retrying a failing sink with
// backoff. stop (nil at close) cuts the retries short at close: then the
// events are counted lost and logged.
func (l *Log) writeBatch(batch []item, stop <-chan struct{}) {
	recs := make([]Record, 0, len(batch)+1)
	ends := make([]int, 0, len(batch)+1)
	buf := l.buf[:0]
	seq, prev := l.seq, l.prev
	add := func(ev *Event) {
		if l.opts.ChainID != "" {
			ev.ChainID = l.opts.ChainID
		}
		ev.Context = l.opts.Redactor.Apply(ev.Context)
		applyCaps(ev)
		var err error
		buf, err = encode(buf, ev, seq+1, prev)
		if err != nil {
			// Only unencodable context values (NaN) get here; keep the
			// record without them rather than lose it.
			ev.Context = map[string]any{"unencodable_context": err.Error()}
			if buf, err = encode(buf, ev, seq+1, prev); err != nil {
				l.log.Error("audit event cannot be encoded", "error", err)
				l.lose("write_failed", 1)
				return
			}
		}
		seq, prev = ev.Seq, ev.Hash
		recs = append(recs, Record{Event: ev})
		ends = append(ends, len(buf))
	}
	if n := l.pendingDrops.Swap(0); n > 0 {
		add(&Event{Time: time.Now().UTC(), Operation: OpEventsDropped, Decision: Error, Count: n,
			Error: fmt.Sprintf("%d audit events were dropped by the %q overflow policy before this record", n, l.opts.Overflow)})
	}
	var flushes []chan struct{}
	var durables []chan error
	for _, it := range batch {
		if it.flush != nil {
			flushes = append(flushes, it.flush)
			continue
		}
		if it.durable != nil {
			n := len(recs)
			add(it.ev)
			if len(recs) == n {
				it.durable <- errors.New("the audit event could not be encoded")
				continue
			}
			durables = append(durables, it.durable)
			continue
		}
		add(it.ev)
	}
	// The lines share one buffer, reused batch after batch.
	for i := range recs {
		begin := 0
		if i > 0 {
			begin = ends[i-1]
		}
		recs[i].Line = buf[begin:ends[i]:ends[i]]
	}
	l.buf = buf
	var err error
	if len(recs) > 0 {
		err = l.persist(recs, stop)
		l.seq, l.prev = seq, prev
		l.unsynced = true
	}
	if len(durables) > 0 {
		if err == nil {
			err = l.sync(stop)
		}
		for _, d := range durables {
			d <- err
		}
	}
	for _, f := range flushes {
		close(f)
	}
}

// sync syncs a Syncer sink, retrying like persist.
func (l *Log) sync(stop <-chan struct{}) error {
	s, ok := l.opts.Sink.(Syncer)
	if !ok {
		return nil
	}
	backoff := 50 * time.Millisecond
	for {
		err := s.Sync()
		if err == nil {
			l.unsynced = false
			return nil
		}
		l.writeErrs.Inc()
		l.log.Error("syncing the audit trail failed; retrying", "sink", l.opts.Sink.Describe(), "error", err)
		select {
		case <-time.After(backoff):
		case <-stop:
			stop = nil
		case <-l.abort:
			return fmt.Errorf("syncing the audit trail (%s) failed through shutdown: %w", l.opts.Sink.Describe(), err)
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// persist writes recs, retrying a failing sink with backoff until it
// succeeds or Close's deadline passes (then the records are counted lost
// and it returns the error).
func (l *Log) persist(recs []Record, stop <-chan struct{}) error {
	backoff := 50 * time.Millisecond
	defer l.failing.Store(false)
	for attempt := 1; ; attempt++ {
		l.writingSince.Store(time.Now().UnixNano())
		err := l.opts.Sink.Write(l.abortCtx, recs)
		l.writingSince.Store(0)
		if err == nil {
			l.written.Add(float64(len(recs)))
			if attempt > 1 {
				l.log.Info("audit trail writable again", "sink", l.opts.Sink.Describe(), "attempts", attempt)
			}
			return nil
		}
		l.lastErr.Store(err)
		l.failing.Store(true)
		l.writeErrs.Inc()
		l.log.Error("writing audit events failed; retrying", "sink", l.opts.Sink.Describe(), "events", len(recs), "attempt", attempt, "error", err)
		select {
		case <-time.After(backoff):
		case <-stop:
			// Close came during the outage: go on retrying until its
			// deadline.
			stop = nil
		case <-l.abort:
			l.lose("write_failed", len(recs))
			l.log.Error("audit events lost: the sink failed through shutdown", "sink", l.opts.Sink.Describe(), "events", len(recs),
				"first_seq", recs[0].Event.Seq, "last_seq", recs[len(recs)-1].Event.Seq)
			return fmt.Errorf("writing the audit trail (%s) failed through shutdown: %w", l.opts.Sink.Describe(), err)
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}
