package mcpgateway

import (
	"encoding/json"
	"sync"
	"time"
)

// maxListIDs bounds the list request IDs remembered per session (for
// filtering responses replayed on a resumed GET stream).
const maxListIDs = 64

// sessionTable binds each MCP session the upstream opened to the identity
// that opened it, so that a session ID alone never lets another caller in.
type sessionTable struct {
	mu       sync.Mutex
	max      int
	idle     time.Duration
	sessions map[string]*sessionEntry
}

type sessionEntry struct {
	owner string
	last  time.Time
	lists map[string]string // request ID -> list method
	// elicitURL: the client declared URL-mode elicitation in initialize.
	elicitURL bool
}

func newSessionTable(max int, idle time.Duration) *sessionTable {
	return &sessionTable{max: max, idle: idle, sessions: map[string]*sessionEntry{}}
}

// bind records a session the upstream just opened. When the table is full
// the idle sessions go first, then the least recently used.
func (t *sessionTable) bind(id, owner string, elicitURL bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.sessions[id]; ok {
		return // never rebind a session to another identity
	}
	if len(t.sessions) >= t.max {
		now := time.Now()
		var oldest string
		var oldestAt time.Time
		for k, e := range t.sessions {
			if now.Sub(e.last) > t.idle {
				delete(t.sessions, k)
				continue
			}
			if oldest == "" || e.last.Before(oldestAt) {
				oldest, oldestAt = k, e.last
			}
		}
		if len(t.sessions) >= t.max {
			delete(t.sessions, oldest)
		}
	}
	t.sessions[id] = &sessionEntry{owner: owner, last: time.Now(), lists: map[string]string{}, elicitURL: elicitURL}
}

// owns reports whether the session exists, is not idle-expired and belongs
// to owner.
func (t *sessionTable) owns(id, owner string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.sessions[id]
	if !ok {
		return false
	}
	if time.Since(e.last) > t.idle {
		delete(t.sessions, id)
		return false
	}
	if e.owner != owner {
		return false
	}
	e.last = time.Now()
	return true
}

func (t *sessionTable) drop(id string) {
	if id == "" {
		return
	}
	t.mu.Lock()
	delete(t.sessions, id)
	t.mu.Unlock()
}

// noteList remembers a list request of a session.
func (t *sessionTable) noteList(id string, reqID json.RawMessage, method string) {
	if id == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.sessions[id]
	if e == nil {
		return
	}
	if len(e.lists) >= maxListIDs {
		clear(e.lists)
	}
	e.lists[string(reqID)] = method
}

// listMethod matches responses of a session's list requests.
func (t *sessionTable) listMethod(id string) func(json.RawMessage) (string, bool) {
	return func(reqID json.RawMessage) (string, bool) {
		t.mu.Lock()
		defer t.mu.Unlock()
		e := t.sessions[id]
		if e == nil {
			return "", false
		}
		m, ok := e.lists[string(reqID)]
		return m, ok
	}
}

// elicitsURL reports whether the session's client declared URL-mode
// elicitation (capabilities.elicitation.url) when it initialized.
func (t *sessionTable) elicitsURL(id string) bool {
	if id == "" {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.sessions[id]
	return e != nil && e.elicitURL
}

// declaresURLElicitation reads an initialize request's client
// capabilities: URL mode is declared by an elicitation.url member
// (revision 2025-11-25; an empty elicitation object means form mode only).
func declaresURLElicitation(params json.RawMessage) bool {
	var p struct {
		Capabilities struct {
			Elicitation struct {
				URL json.RawMessage `json:"url"`
			} `json:"elicitation"`
		} `json:"capabilities"`
	}
	if json.Unmarshal(params, &p) != nil {
		return false
	}
	u := p.Capabilities.Elicitation.URL
	return len(u) > 0 && string(u) != "null"
}
