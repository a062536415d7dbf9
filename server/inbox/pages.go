package inbox

import (
	"cmp"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/store/rel"
)

// page is what every template gets.
type page struct {
	Title string
	// Nav names the current section: inbox, history, agents.
	Nav    string
	Person rel.Object
	CSRF   string
	// SignOut shows the sign-out button (OIDC sessions only: behind a
	// proxy, signing out is the proxy's).
	SignOut bool
	Flash   string
	Error   string
	// Status is the HTTP status of an error page.
	Status int

	ApprovalsOff bool
	TokensOff    bool
	Requests     []requestView
	Request      *requestView
	// CannotDecide: the request exists but this person may not decide it.
	CannotDecide bool
	Agents       []agentView
}

type requestView struct {
	approval.Request
	Durations []durationOption
	// Mine: the person is the chain's principal.
	Mine bool
	// CSRF is the session's form token.
	CSRF string
}

type durationOption struct {
	Value    string
	Label    string
	Selected bool
}

// maxHistory bounds the history page.
const maxHistory = 200

var funcs = template.FuncMap{
	"since": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return humanDuration(time.Since(t)) + " ago"
	},
	"until": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		d := time.Until(t)
		if d <= 0 {
			return "passed"
		}
		return "in " + humanDuration(d)
	},
	"stamp": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"iso":      func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"duration": humanDuration,
	"join":     strings.Join,
	// short abbreviates a long id; the page keeps the whole in a title.
	"short": func(id string) string {
		if len(id) <= 12 {
			return id
		}
		return id[:12] + "…"
	},
}

// humanDuration renders 90m as "1h 30m" and 45s as "45s".
func humanDuration(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d <= 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		h, m := int(d.Hours()), int(d.Minutes())%60
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh %dm", h, m)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func (in *Inbox) base(r *http.Request, title, nav string) page {
	p := personFrom(r.Context())
	return page{
		Title: title, Nav: nav, Person: p.Object, CSRF: p.Session.CSRF, SignOut: p.Session.Via == "oidc",
		ApprovalsOff: in.deps.Approvals == nil, TokensOff: in.deps.Tokens == nil,
		Flash: flashes[r.URL.Query().Get("done")],
	}
}

// flashes are the messages a redirect after a change may show; fixed
// texts, so a link cannot put words on the page.
var flashes = map[string]string{
	"approved": "Approved. The agent can retry now.",
	"denied":   "Denied. The agent has been told.",
	"revoked":  "Grant revoked. The agent's next check is denied.",
	"token":    "Token revoked. Checks carrying it, or any token made from it, are denied.",
	"unlinked": "Delegation removed. The agent no longer acts for you.",
}

func (in *Inbox) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
	w.WriteHeader(status)
	if err := in.pages.ExecuteTemplate(w, name, p); err != nil {
		in.log.Error("inbox: rendering a page", "page", name, "error", err)
	}
}

// fail renders an error page with a message for the person.
func (in *Inbox) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	p := in.base(r, http.StatusText(status), "")
	p.Error, p.Status, p.Flash = msg, status, ""
	in.render(w, r, status, "error.html", p)
}

func (in *Inbox) approvalsOff(w http.ResponseWriter, r *http.Request) bool {
	if in.deps.Approvals != nil {
		return false
	}
	in.fail(w, r, http.StatusServiceUnavailable, "Approvals are not served by this server.")
	return true
}

func (in *Inbox) inboxPage(w http.ResponseWriter, r *http.Request) {
	p := in.base(r, "Inbox", "inbox")
	if in.deps.Approvals != nil {
		reqs, err := in.pending(r)
		if err != nil {
			in.serviceFailed(w, r, "listing your requests", err)
			return
		}
		p.Requests = reqs
	}
	in.render(w, r, http.StatusOK, "inbox.html", p)
}

// pending lists the pending requests the person may decide, oldest first.
func (in *Inbox) pending(r *http.Request) ([]requestView, error) {
	p := personFrom(r.Context())
	me := p.Object
	reqs, err := in.deps.Approvals.List(r.Context(), approval.Filter{Approver: &me, Status: approval.Pending})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(reqs, func(a, b approval.Request) int { return a.Created.Compare(b.Created) })
	out := make([]requestView, len(reqs))
	for i, q := range reqs {
		out[i] = in.view(q, p)
	}
	return out, nil
}

func (in *Inbox) view(q approval.Request, p person) requestView {
	return requestView{Request: q, Durations: in.durations(q.Duration), Mine: q.Principal == p.Object, CSRF: p.Session.CSRF}
}

// standardDurations are the grant durations offered, besides the one the
// agent asked for; those over the maximum are left out.
var standardDurations = []time.Duration{5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 4 * time.Hour, 8 * time.Hour, 24 * time.Hour}

func (in *Inbox) durations(requested time.Duration) []durationOption {
	max := in.cfg.MaxGrantDuration
	choice := requested
	if choice <= 0 {
		choice = cmp.Or(in.cfg.DefaultGrantDuration, 15*time.Minute)
	}
	if max > 0 && choice > max {
		choice = max
	}
	ds := slices.Clone(standardDurations)
	ds = append(ds, choice)
	if max > 0 {
		ds = append(ds, max)
	}
	slices.Sort(ds)
	ds = slices.Compact(ds)
	var out []durationOption
	for _, d := range ds {
		if max > 0 && d > max {
			continue
		}
		label := humanDuration(d)
		if d == requested {
			label += " (requested)"
		}
		out = append(out, durationOption{Value: d.String(), Label: label, Selected: d == choice})
	}
	return out
}

func (in *Inbox) requestPage(w http.ResponseWriter, r *http.Request) {
	if in.approvalsOff(w, r) {
		return
	}
	me := personFrom(r.Context()).Object
	q, err := in.deps.Approvals.Get(r.Context(), r.PathValue("id"))
	if errors.Is(err, approval.ErrNotFound) {
		in.fail(w, r, http.StatusNotFound, "There is no such request.")
		return
	}
	if err != nil {
		in.serviceFailed(w, r, "reading the request", err)
		return
	}
	p := in.base(r, "Request", "inbox")
	mayDecide := false
	if q.Status == approval.Pending {
		pending, err := in.pending(r)
		if err != nil {
			in.serviceFailed(w, r, "reading the request", err)
			return
		}
		mayDecide = slices.ContainsFunc(pending, func(v requestView) bool { return v.ID == q.ID })
	}
	// Only those who may decide, the principal and the decider see what
	// a request asks for.
	if !mayDecide && q.Principal != me && q.Decider != me {
		p.CannotDecide = true
		p.Request = &requestView{Request: approval.Request{ID: q.ID, Status: q.Status}}
		in.render(w, r, http.StatusForbidden, "request.html", p)
		return
	}
	v := in.view(q, personFrom(r.Context()))
	p.Request = &v
	p.CannotDecide = q.Status == approval.Pending && !mayDecide
	in.render(w, r, http.StatusOK, "request.html", p)
}

// maxNote bounds a decision's note.
const maxNote = 1000

func (in *Inbox) decision(w http.ResponseWriter, r *http.Request, approve bool) (approval.Decision, bool) {
	d := approval.Decision{Approver: personFrom(r.Context()).Object, Note: strings.TrimSpace(r.PostForm.Get("note"))}
	if len(d.Note) > maxNote {
		in.fail(w, r, http.StatusBadRequest, fmt.Sprintf("The note is %d characters long; at most %d are allowed.", len(d.Note), maxNote))
		return d, false
	}
	if !approve {
		return d, true
	}
	if s := r.PostForm.Get("duration"); s != "" {
		dur, err := time.ParseDuration(s)
		if err != nil || dur <= 0 {
			in.fail(w, r, http.StatusBadRequest, "The duration is not valid: choose one from the list.")
			return d, false
		}
		if max := in.cfg.MaxGrantDuration; max > 0 && dur > max {
			in.fail(w, r, http.StatusBadRequest, fmt.Sprintf("The duration %s is longer than the longest allowed, %s.", humanDuration(dur), humanDuration(max)))
			return d, false
		}
		d.Duration = dur
	}
	d.SingleUse = r.PostForm.Get("single_use") == "on"
	return d, true
}

func (in *Inbox) approve(w http.ResponseWriter, r *http.Request) { in.decide(w, r, true) }
func (in *Inbox) deny(w http.ResponseWriter, r *http.Request)    { in.decide(w, r, false) }

func (in *Inbox) decide(w http.ResponseWriter, r *http.Request, approve bool) {
	if in.approvalsOff(w, r) {
		return
	}
	d, ok := in.decision(w, r, approve)
	if !ok {
		return
	}
	id := r.PathValue("id")
	var err error
	done := "approved"
	if approve {
		_, err = in.deps.Approvals.Approve(r.Context(), id, d)
	} else {
		_, err = in.deps.Approvals.Deny(r.Context(), id, d)
		done = "denied"
	}
	if err != nil {
		in.decisionFailed(w, r, err)
		return
	}
	http.Redirect(w, r, "/ui/?done="+done, http.StatusSeeOther)
}

// decisionFailed words the approval service's refusals for the person.
func (in *Inbox) decisionFailed(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, approval.ErrNotAllowed):
		in.fail(w, r, http.StatusForbidden, "Refused: you may not decide this request. Only the person the agent acts for, or someone who holds the permission on the resource, may.")
	case errors.Is(err, approval.ErrNotPending):
		in.fail(w, r, http.StatusConflict, "This request has already been decided, or it has expired.")
	case errors.Is(err, approval.ErrNotFound):
		in.fail(w, r, http.StatusNotFound, "There is no such request.")
	case errors.Is(err, approval.ErrInvalid):
		in.fail(w, r, http.StatusBadRequest, "Refused: "+err.Error())
	default:
		in.serviceFailed(w, r, "recording your decision", err)
	}
}

func (in *Inbox) serviceFailed(w http.ResponseWriter, r *http.Request, doing string, err error) {
	in.log.Error("inbox: "+doing, "error", err)
	in.fail(w, r, http.StatusInternalServerError, "Something went wrong "+doing+". Try again; if it keeps failing, tell your administrator.")
}

func (in *Inbox) historyPage(w http.ResponseWriter, r *http.Request) {
	p := in.base(r, "History", "history")
	if in.deps.Approvals == nil {
		in.render(w, r, http.StatusOK, "history.html", p)
		return
	}
	me := personFrom(r.Context()).Object
	byID := map[string]approval.Request{}
	for _, f := range []approval.Filter{{Principal: &me}, {Approver: &me}} {
		reqs, err := in.deps.Approvals.List(r.Context(), f)
		if err != nil {
			in.serviceFailed(w, r, "listing your history", err)
			return
		}
		for _, q := range reqs {
			if q.Status != approval.Pending {
				byID[q.ID] = q
			}
		}
	}
	var hist []approval.Request
	for _, q := range byID {
		hist = append(hist, q)
	}
	at := func(q approval.Request) time.Time { return cmp.Or(q.Decided, q.Created) }
	slices.SortFunc(hist, func(a, b approval.Request) int { return cmp.Or(at(b).Compare(at(a)), strings.Compare(a.ID, b.ID)) })
	if len(hist) > maxHistory {
		hist = hist[:maxHistory]
	}
	for _, q := range hist {
		p.Requests = append(p.Requests, in.view(q, personFrom(r.Context())))
	}
	in.render(w, r, http.StatusOK, "history.html", p)
}
