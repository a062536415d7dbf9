package escalation

import (
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// Signals are what this replica has seen an agent do, as of just before the
// check being asked about. They are kept in memory, per replica: a server
// behind a load balancer sees only the checks it answered, and a restart
// forgets them all.
type Signals struct {
	// ChecksLastMinute counts the agent's checks (allowed or not) in the
	// last 60 seconds, at one-second granularity.
	ChecksLastMinute int
	// DenialsLastHour counts the agent's checks that were not allowed
	// (denied, conditional, or escalated) in the last 60 minutes, at
	// one-minute granularity.
	DenialsLastHour int
	// FirstUseResourceType is true when no earlier check by the agent on
	// a resource of this type was allowed; FirstUsePermission likewise for
	// the permission. A forgotten agent (evicted, or never seen by this
	// replica) is new: these read true, so that forgetting escalates.
	FirstUseResourceType bool
	FirstUsePermission   bool
}

const (
	// DefaultMaxAgents is how many agents' signals a replica keeps by
	// default; past it the least recently seen agent is forgotten.
	DefaultMaxAgents = 50_000
	// maxUses bounds the resource types, and the permissions, remembered
	// per agent. Past it a new one is not remembered, so it stays a first
	// use (and escalates) on every check.
	maxUses = 64
	// signalShards spreads agents over independently locked shards so
	// that checks by different agents rarely wait on each other.
	signalShards = 32
	windowSlots  = 60
)

// window counts events in the last 60 units (seconds or minutes) without
// growing: one saturating counter per unit, reused as time moves on.
type window struct {
	// head is the newest unit counted; slot u%60 holds unit u for u in
	// (head-60, head].
	head int64
	n    [windowSlots]uint16
}

func slot(u int64) int { return int(((u % windowSlots) + windowSlots) % windowSlots) }

func (w *window) add(u int64) {
	switch {
	case u > w.head:
		if u-w.head >= windowSlots {
			w.n = [windowSlots]uint16{}
		} else {
			for x := w.head + 1; x <= u; x++ {
				w.n[slot(x)] = 0
			}
		}
		w.head = u
	case u <= w.head-windowSlots:
		return // older than the window: already forgotten
	}
	if i := slot(u); w.n[i] < math.MaxUint16 {
		w.n[i]++
	}
}

// sum counts the events in units (u-60, u].
func (w *window) sum(u int64) int {
	total := 0
	for k := int64(0); k < windowSlots; k++ {
		unit := w.head - k
		if unit <= u-windowSlots {
			break
		}
		if unit <= u {
			total += int(w.n[slot(unit)])
		}
	}
	return total
}

// agentState is one agent's signals, on its shard's recency list.
type agentState struct {
	key        rel.Object
	prev, next *agentState
	checks     window // per second
	denials    window // per minute
	// types and perms are the resource types and permissions the agent
	// was allowed on, at most maxUses each.
	types, perms []string
}

type shard struct {
	mu     sync.Mutex
	agents map[rel.Object]*agentState
	// head is the most recently observed agent, tail the least.
	head, tail *agentState
}

// signalStore keeps agents' signals with bounded memory: at most perShard
// agents per shard, the least recently observed evicted first.
type signalStore struct {
	seed     maphash.Seed
	perShard int
	shards   [signalShards]shard
}

func newSignalStore(maxAgents int) *signalStore {
	s := &signalStore{seed: maphash.MakeSeed(), perShard: max(1, (maxAgents+signalShards-1)/signalShards)}
	for i := range s.shards {
		s.shards[i].agents = make(map[rel.Object]*agentState)
	}
	return s
}

func (s *signalStore) shard(agent rel.Object) *shard {
	return &s.shards[maphash.Comparable(s.seed, agent)%signalShards]
}

// read returns the agent's signals at in.Time, for in's resource type and
// permission.
func (s *signalStore) read(in Input) Signals {
	sh := s.shard(in.Agent)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a := sh.agents[in.Agent]
	if a == nil {
		return Signals{FirstUseResourceType: true, FirstUsePermission: true}
	}
	return Signals{
		ChecksLastMinute:     a.checks.sum(in.Time.Unix()),
		DenialsLastHour:      a.denials.sum(minute(in.Time)),
		FirstUseResourceType: !has(a.types, in.Resource.Type),
		FirstUsePermission:   !has(a.perms, in.Permission),
	}
}

// minute is t's minute since the epoch, rounded down.
func minute(t time.Time) int64 {
	s := t.Unix()
	if s < 0 {
		s -= 59
	}
	return s / 60
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// observe records one check.
func (s *signalStore) observe(in Input, allowed bool) {
	sh := s.shard(in.Agent)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a := sh.agents[in.Agent]
	if a == nil {
		if len(sh.agents) >= s.perShard {
			sh.evict()
		}
		// Clones: the key outlives the request it came from.
		key := rel.Object{Type: strings.Clone(in.Agent.Type), ID: strings.Clone(in.Agent.ID)}
		a = &agentState{key: key}
		sh.agents[key] = a
	} else {
		sh.unlink(a)
	}
	sh.pushFront(a)
	a.checks.add(in.Time.Unix())
	if !allowed {
		a.denials.add(minute(in.Time))
		return
	}
	if len(a.types) < maxUses && !has(a.types, in.Resource.Type) {
		a.types = append(a.types, strings.Clone(in.Resource.Type))
	}
	if len(a.perms) < maxUses && !has(a.perms, in.Permission) {
		a.perms = append(a.perms, strings.Clone(in.Permission))
	}
}

func (sh *shard) evict() {
	if t := sh.tail; t != nil {
		sh.unlink(t)
		delete(sh.agents, t.key)
	}
}

func (sh *shard) unlink(a *agentState) {
	if a.prev != nil {
		a.prev.next = a.next
	} else {
		sh.head = a.next
	}
	if a.next != nil {
		a.next.prev = a.prev
	} else {
		sh.tail = a.prev
	}
	a.prev, a.next = nil, nil
}

func (sh *shard) pushFront(a *agentState) {
	a.next = sh.head
	if sh.head != nil {
		sh.head.prev = a
	}
	sh.head = a
	if sh.tail == nil {
		sh.tail = a
	}
}

// tracked is the number of agents whose signals are kept.
func (s *signalStore) tracked() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.agents)
		sh.mu.Unlock()
	}
	return n
}
