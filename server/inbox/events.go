package inbox

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/mandate-authz/mandate/server/approval"
)

// heartbeat keeps idle event streams open through proxies.
const heartbeat = 25 * time.Second

// events streams changes to the requests the person may decide as
// Server-Sent Events ("request": {"id","status"}); the page's script
// refreshes its list on each. Without script the page still works: reload.
func (in *Inbox) events(w http.ResponseWriter, r *http.Request) {
	if in.approvalsOff(w, r) {
		return
	}
	rc := http.NewResponseController(w)
	// A server-wide write timeout would cut the stream; this one has none.
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 3000\n\n")
	if rc.Flush() != nil {
		return
	}

	ctx := r.Context()
	me := personFrom(ctx).Object
	type change struct {
		req approval.Request
		err error
	}
	changes := make(chan change)
	go func() {
		defer close(changes)
		for q, err := range in.deps.Approvals.Watch(ctx, approval.Filter{Approver: &me}) {
			select {
			case changes <- change{q, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case c, ok := <-changes:
			if !ok {
				return
			}
			if c.err != nil {
				if ctx.Err() == nil {
					in.log.Warn("inbox: an event stream ended", "error", c.err)
				}
				return // the browser reconnects
			}
			data, _ := json.Marshal(map[string]string{"id": c.req.ID, "status": string(c.req.Status)})
			fmt.Fprintf(w, "event: request\ndata: %s\n\n", data)
		}
		if rc.Flush() != nil {
			return
		}
	}
}
