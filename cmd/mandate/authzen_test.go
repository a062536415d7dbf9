package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// The AuthZEN end-to-end tests run `mandate serve --authzen-mapping
// DIR/mapping.yaml`, load DIR/schema.zed and DIR/relationships.txt with
// `mandate schema write` and `mandate import` exactly as the README says,
// and hold every answer to the interop rules (authzen-scenarios.md),
// strictly: HTTP 200, application/json, boolean decisions, the exact
// shapes the harness compares, and X-Request-ID echoed.

const authzenKey = "authzen-test-key-7c1"

// authzenPDP is a running `mandate serve` with an example loaded.
type authzenPDP struct {
	base string
	key  string
}

// authzenProbes are allowed checks of each example, asked fully
// consistent after loading so that the engine has applied the import
// before the AuthZEN calls (which answer at the engine's latest revision).
var authzenProbes = map[string][2]string{
	"todo":   {"todo_list:shared#can_read_todos", "user:anyone"},
	"search": {"record:101#view", "user:alice"},
}

func startAuthZEN(t *testing.T, example string) *authzenPDP {
	t.Helper()
	dir := filepath.Join("..", "..", "examples", "authzen", example)
	logs := &syncBuffer{}
	root := newRootCommand()
	root.SetArgs([]string{"serve", "--datastore-engine", "memory", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--grpc-preshared-key", authzenKey, "--authzen-mapping", filepath.Join(dir, "mapping.yaml"), "--grpc-shutdown-grace-period", "5s"})
	root.SetOut(logs)
	root.SetErr(logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop within 15s")
		}
	})
	serving := regexp.MustCompile(`msg=serving grpc=(\S+) http=(\S+)`)
	var grpcAddr, httpAddr string
	for deadline := time.Now().Add(10 * time.Second); ; {
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			grpcAddr, httpAddr = m[1], m[2]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v; log:\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not start; log:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Setenv("MANDATE_ENDPOINT", grpcAddr)
	t.Setenv("MANDATE_TOKEN", authzenKey)
	t.Setenv("MANDATE_INSECURE", "true")
	mustCLI(t, "schema", "write", filepath.Join(dir, "schema.zed"))
	mustCLI(t, "import", "--no-progress", filepath.Join(dir, "relationships.txt"))
	probe := authzenProbes[example]
	mustCLI(t, "check", "--fully-consistent", probe[0], probe[1])
	return &authzenPDP{base: "http://" + httpAddr, key: authzenKey}
}

// post sends body to path and checks the strict transport points: the
// status, JSON content type and the X-Request-ID echo. It returns the body.
func (p *authzenPDP) post(t *testing.T, path, body string, wantStatus int) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, p.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if p.key != "" {
		req.Header.Set("Authorization", "Bearer "+p.key)
	}
	reqID := fmt.Sprintf("test-%d", time.Now().UnixNano())
	req.Header.Set("X-Request-ID", reqID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("POST %s %s: status %d, want %d; body %s", path, body, resp.StatusCode, wantStatus, out)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("POST %s: Content-Type %q, want application/json", path, ct)
	}
	if got := resp.Header.Get("X-Request-ID"); got != reqID {
		t.Errorf("POST %s: X-Request-ID %q, want the request's %q echoed", path, got, reqID)
	}
	return out
}

// decisionOf reads a single evaluation's decision, which must be a JSON
// boolean.
func decisionOf(t *testing.T, body []byte) bool {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("evaluation answer %s: %v", body, err)
	}
	switch string(m["decision"]) {
	case "true":
		return true
	case "false":
		return false
	}
	t.Fatalf("evaluation answer %s: decision is not a JSON boolean", body)
	return false
}

// The Todo interop's users (PID, email, roles).
type todoUser struct {
	name, pid, email string
	roles            []string
}

var todoUsers = []todoUser{
	{"rick", "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs", "rick@the-citadel.com", []string{"admin", "evil_genius"}},
	{"morty", "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs", "morty@the-citadel.com", []string{"editor"}},
	{"summer", "CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs", "summer@the-smiths.com", []string{"editor"}},
	{"beth", "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs", "beth@the-smiths.com", []string{"viewer"}},
	{"jerry", "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs", "jerry@the-smiths.com", []string{"viewer"}},
}

func (u todoUser) has(role string) bool {
	for _, r := range u.roles {
		if r == role {
			return true
		}
	}
	return false
}

// todoRule is the scenario's rule for one action, written from the rules
// table: owner is the todo's ownerID.
func todoRule(u todoUser, action, owner string) bool {
	editor := u.has("editor") || u.has("admin") || u.has("evil_genius")
	switch action {
	case "can_read_user", "can_read_todos":
		return true
	case "can_create_todo":
		return editor
	case "can_update_todo":
		return u.has("evil_genius") || (editor && owner == u.email)
	case "can_delete_todo":
		return u.has("admin") || (editor && owner == u.email)
	}
	panic(action)
}

// todoCase is one request of the scenario's shapes.
type todoCase struct {
	user     todoUser
	action   string
	resource string // JSON
	owner    string
	want     bool
}

func todoCases() []todoCase {
	owners := []string{}
	for _, u := range todoUsers {
		owners = append(owners, u.email)
	}
	owners = append(owners, "stranger@example.com")
	var cases []todoCase
	for i, u := range todoUsers {
		for _, other := range todoUsers {
			cases = append(cases,
				todoCase{u, "can_read_user", fmt.Sprintf(`{"type":"user","id":%q}`, other.email), "", true},
				todoCase{u, "can_read_user", fmt.Sprintf(`{"type":"user","id":%q}`, other.pid), "", true})
		}
		cases = append(cases,
			todoCase{u, "can_read_todos", `{"type":"todo","id":"todo-1"}`, "", true},
			todoCase{u, "can_create_todo", `{"type":"todo","id":"todo-1"}`, "", todoRule(u, "can_create_todo", "")})
		for j, owner := range owners {
			for _, a := range []string{"can_update_todo", "can_delete_todo"} {
				// Todo ids are UUIDs the PDP has never seen.
				id := fmt.Sprintf("7240d0db-8ff0-41ec-98b2-34a096273b%d%d", i, j)
				res := fmt.Sprintf(`{"type":"todo","id":%q,"properties":{"ownerID":%q}}`, id, owner)
				cases = append(cases, todoCase{u, a, res, owner, todoRule(u, a, owner)})
			}
		}
	}
	return cases
}

func TestAuthZENTodo(t *testing.T) {
	pdp := startAuthZEN(t, "todo")
	cases := todoCases()
	// The rules' own edge cases are among the cases; make sure the oracle
	// agrees with the scenario's notes before trusting it.
	var beth, rick todoUser = todoUsers[3], todoUsers[0]
	if todoRule(beth, "can_update_todo", beth.email) || !todoRule(rick, "can_delete_todo", "stranger@example.com") {
		t.Fatal("the test's oracle contradicts the scenario's notes")
	}
	t.Run("evaluation", func(t *testing.T) {
		for _, c := range cases {
			body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":%q},"resource":%s,"context":{}}`, c.user.pid, c.action, c.resource)
			if got := decisionOf(t, pdp.post(t, "/access/v1/evaluation", body, http.StatusOK)); got != c.want {
				t.Errorf("%s %s %s: decision %v, want %v", c.user.name, c.action, c.resource, got, c.want)
			}
		}
	})
	t.Run("evaluations", func(t *testing.T) {
		// Boxcar: subject and action at the top level, only resources in
		// the items, as the interop sends them.
		for _, u := range todoUsers {
			for _, a := range []string{"can_update_todo", "can_delete_todo"} {
				var items []string
				var want []string
				for _, c := range cases {
					if c.user.pid == u.pid && c.action == a {
						items = append(items, fmt.Sprintf(`{"resource":%s}`, c.resource))
						want = append(want, fmt.Sprintf(`{"decision":%v}`, c.want))
					}
				}
				body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":%q},"evaluations":[%s]}`, u.pid, a, strings.Join(items, ","))
				out := pdp.post(t, "/access/v1/evaluations", body, http.StatusOK)
				var resp struct{ Evaluations []json.RawMessage }
				if err := json.Unmarshal(out, &resp); err != nil {
					t.Fatal(err)
				}
				got := make([]string, len(resp.Evaluations))
				for i, e := range resp.Evaluations {
					got[i] = string(e)
				}
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("%s %s boxcar:\n got %v\nwant %v", u.name, a, got, want)
				}
			}
		}
	})
	t.Run("semantics", func(t *testing.T) {
		beth := todoUsers[3]
		// read (permit), create (deny), read (permit), for beth.
		items := `[{"action":{"name":"can_read_todos"}},{"action":{"name":"can_create_todo"}},{"action":{"name":"can_read_todos"}}]`
		for _, tc := range []struct{ semantic, want string }{
			{"", `[{"decision":true},{"decision":false},{"decision":true}]`},
			{"execute_all", `[{"decision":true},{"decision":false},{"decision":true}]`},
			{"deny_on_first_deny", `[{"decision":true},{"decision":false}]`},
			{"permit_on_first_permit", `[{"decision":true}]`},
		} {
			opts := ""
			if tc.semantic != "" {
				opts = fmt.Sprintf(`,"options":{"evaluations_semantic":%q}`, tc.semantic)
			}
			body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"resource":{"type":"todo","id":"todo-1"},"evaluations":%s%s}`, beth.pid, items, opts)
			var resp struct{ Evaluations json.RawMessage }
			if err := json.Unmarshal(pdp.post(t, "/access/v1/evaluations", body, http.StatusOK), &resp); err != nil {
				t.Fatal(err)
			}
			if string(resp.Evaluations) != tc.want {
				t.Errorf("semantic %q: evaluations %s, want %s", tc.semantic, resp.Evaluations, tc.want)
			}
		}
	})
	t.Run("pinned resources need no id", func(t *testing.T) {
		for _, u := range todoUsers {
			body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":"can_create_todo"},"resource":{"type":"todo"}}`, u.pid)
			if got := decisionOf(t, pdp.post(t, "/access/v1/evaluation", body, http.StatusOK)); got != todoRule(u, "can_create_todo", "") {
				t.Errorf("%s can_create_todo without a todo id: %v", u.name, got)
			}
		}
	})
	t.Run("evaluations without items is one evaluation", func(t *testing.T) {
		body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":"can_delete_todo"},"resource":{"type":"todo","id":"t","properties":{"ownerID":"nobody@example.com"}}}`, rick.pid)
		if !decisionOf(t, pdp.post(t, "/access/v1/evaluations", body, http.StatusOK)) {
			t.Error("rick may delete any todo")
		}
	})
	t.Run("unknown action denies", func(t *testing.T) {
		body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":"can_launch_rockets"},"resource":{"type":"todo","id":"todo-1"}}`, rick.pid)
		if decisionOf(t, pdp.post(t, "/access/v1/evaluation", body, http.StatusOK)) {
			t.Error("an unknown action was allowed")
		}
	})
	t.Run("missing ownerID denies", func(t *testing.T) {
		morty := todoUsers[1]
		body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":"can_update_todo"},"resource":{"type":"todo","id":"x"}}`, morty.pid)
		if decisionOf(t, pdp.post(t, "/access/v1/evaluation", body, http.StatusOK)) {
			t.Error("an update without the todo's owner was allowed")
		}
	})
}

// The Search interop's data, from the scenario's tables.
var (
	searchUsers = map[string][2]string{ // role, department
		"alice": {"manager", "Sales"}, "bob": {"employee", "Legal"}, "carol": {"contractor", "Legal"},
		"dan": {"manager", "Finance"}, "erin": {"employee", "Finance"}, "felix": {"contractor", "Accounting"},
	}
	searchRecords = map[string][2]string{ // department, owner
		"101": {"Legal", "alice"}, "102": {"Legal", "bob"}, "103": {"Legal", "carol"}, "104": {"Accounting", "dan"},
		"105": {"Legal", "erin"}, "106": {"Accounting", "felix"}, "107": {"Sales", "alice"}, "108": {"Legal", "bob"},
		"109": {"Accounting", "carol"}, "110": {"Sales", "dan"}, "111": {"Accounting", "erin"}, "112": {"Legal", "felix"},
		"113": {"Sales", "alice"}, "114": {"Accounting", "bob"}, "115": {"Finance", "carol"}, "116": {"Legal", "dan"},
		"117": {"Legal", "erin"}, "118": {"Accounting", "felix"}, "119": {"Legal", "alice"}, "120": {"Accounting", "bob"},
	}
	searchActions = []string{"delete", "edit", "view"}
)

// searchRule is the scenario's rule for user u doing action a on record r.
func searchRule(u, a, r string) bool {
	user, rec := searchUsers[u], searchRecords[r]
	owner, sameDept, manager := rec[1] == u, rec[0] == user[1], user[0] == "manager"
	switch a {
	case "view":
		return owner || sameDept || manager
	case "edit":
		return owner || (manager && sameDept)
	case "delete":
		return owner
	}
	return false
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// results reads a search answer's results, each of which must be exactly
// {"type","id"} (or {"name"}), and returns them sorted.
func results(t *testing.T, body []byte, entityType string) []string {
	t.Helper()
	var resp struct{ Results []json.RawMessage }
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Results == nil {
		t.Fatalf("answer %s: no results array", body)
	}
	var out []string
	for _, r := range resp.Results {
		if entityType == "" {
			var a struct{ Name string }
			json.Unmarshal(r, &a)
			if want := fmt.Sprintf(`{"name":%q}`, a.Name); string(r) != want {
				t.Errorf("action result %s, want exactly %s", r, want)
			}
			out = append(out, a.Name)
			continue
		}
		var e struct{ Type, ID string }
		json.Unmarshal(r, &e)
		if want := fmt.Sprintf(`{"type":%q,"id":%q}`, entityType, e.ID); string(r) != want {
			t.Errorf("result %s, want exactly %s", r, want)
		}
		out = append(out, e.ID)
	}
	sort.Strings(out)
	return out
}

func TestAuthZENSearch(t *testing.T) {
	pdp := startAuthZEN(t, "search")
	same := func(what string, got, want []string) {
		t.Helper()
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: got %v, want %v", what, got, want)
		}
	}
	t.Run("subject", func(t *testing.T) {
		for _, r := range keys(searchRecords) {
			for _, a := range searchActions {
				var want []string
				for _, u := range keys(searchUsers) {
					if searchRule(u, a, r) {
						want = append(want, u)
					}
				}
				body := fmt.Sprintf(`{"subject":{"type":"user"},"action":{"name":%q},"resource":{"type":"record","id":%q}}`, a, r)
				same("who may "+a+" record "+r, results(t, pdp.post(t, "/access/v1/search/subject", body, http.StatusOK), "user"), want)
			}
		}
	})
	t.Run("resource", func(t *testing.T) {
		for _, u := range keys(searchUsers) {
			for _, a := range searchActions {
				var want []string
				for _, r := range keys(searchRecords) {
					if searchRule(u, a, r) {
						want = append(want, r)
					}
				}
				body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":%q},"resource":{"type":"record"}}`, u, a)
				same("what "+u+" may "+a, results(t, pdp.post(t, "/access/v1/search/resource", body, http.StatusOK), "record"), want)
			}
		}
	})
	t.Run("action", func(t *testing.T) {
		empty := 0
		for _, u := range keys(searchUsers) {
			for _, r := range keys(searchRecords) {
				var want []string
				for _, a := range searchActions {
					if searchRule(u, a, r) {
						want = append(want, a)
					}
				}
				if want == nil {
					empty++
				}
				body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"resource":{"type":"record","id":%q}}`, u, r)
				same("what "+u+" may do on "+r, results(t, pdp.post(t, "/access/v1/search/action", body, http.StatusOK), ""), want)
			}
		}
		if empty == 0 {
			t.Error("no empty action search was tried")
		}
	})
	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct{ path, body, member string }{
			{"/access/v1/search/subject", `{"subject":{"type":"user"},"action":{"name":"view"},"resource":{"type":"record"}}`, "resource.id: missing"},
			{"/access/v1/search/resource", `{"subject":{"type":"user"},"action":{"name":"view"},"resource":{"type":"record"}}`, "subject.id: missing"},
			{"/access/v1/search/resource", `{"subject":{"type":"user","id":"alice"},"resource":{"type":"record"}}`, "action.name: missing"},
			{"/access/v1/search/action", `{"subject":{"type":"user","id":"alice"},"resource":{"type":"folder","id":"1"}}`, "resource.type: \"folder\""},
			{"/access/v1/search/subject", `{"subject":{"type":"user"},"action":{"name":"view"},"resource":{"type":"record","id":101}}`, "resource.id: expected a string"},
		} {
			_, msg := errorOf(t, pdp.post(t, tc.path, tc.body, http.StatusBadRequest))
			if !strings.HasPrefix(msg, tc.member) {
				t.Errorf("%s %s: message %q does not start with %q", tc.path, tc.body, msg, tc.member)
			}
		}
	})
	t.Run("unknown names give empty results", func(t *testing.T) {
		for _, tc := range []struct{ path, body string }{
			{"/access/v1/search/subject", `{"subject":{"type":"user"},"action":{"name":"view"},"resource":{"type":"record","id":"999"}}`},
			{"/access/v1/search/subject", `{"subject":{"type":"user"},"action":{"name":"shred"},"resource":{"type":"record","id":"101"}}`},
			{"/access/v1/search/resource", `{"subject":{"type":"user","id":"mallory"},"action":{"name":"view"},"resource":{"type":"record"}}`},
			{"/access/v1/search/resource", `{"subject":{"type":"user","id":"alice"},"action":{"name":"shred"},"resource":{"type":"record"}}`},
			{"/access/v1/search/action", `{"subject":{"type":"user","id":"mallory"},"resource":{"type":"record","id":"101"}}`},
			{"/access/v1/search/action", `{"subject":{"type":"user","id":"alice"},"resource":{"type":"record","id":"999"}}`},
		} {
			out := pdp.post(t, tc.path, tc.body, http.StatusOK)
			if !bytes.HasPrefix(out, []byte(`{"results":[]`)) {
				t.Errorf("%s %s: %s, want {\"results\": []}", tc.path, tc.body, out)
			}
		}
	})
}

// errorOf reads an AuthZEN error answer: {"error": {"status", "code",
// "message"}}.
func errorOf(t *testing.T, body []byte) (int, string) {
	t.Helper()
	var e struct {
		Error struct {
			Status  int
			Code    string
			Message string
		}
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" {
		t.Fatalf("error answer %s is not {\"error\": {...}}: %v", body, err)
	}
	if bytes.Contains(body, []byte(`"decision"`)) {
		t.Errorf("an error answer carries a decision: %s", body)
	}
	return e.Error.Status, e.Error.Message
}

func TestAuthZENBadInput(t *testing.T) {
	pdp := startAuthZEN(t, "todo")
	morty := todoUsers[1].pid
	sub := fmt.Sprintf(`{"type":"user","id":%q}`, morty)
	for _, tc := range []struct {
		name, path, body string
		status           int
		member           string // the message must start with it
	}{
		{"malformed JSON", "/access/v1/evaluation", `{"subject":`, 400, "malformed JSON"},
		{"empty body", "/access/v1/evaluation", ``, 400, "the request body is empty"},
		{"not an object", "/access/v1/evaluation", `[1]`, 400, "expected a JSON object"},
		{"numeric id", "/access/v1/evaluation", `{"subject":{"type":"user","id":101},"action":{"name":"can_read_todos"},"resource":{"type":"todo","id":"todo-1"}}`, 400, "subject.id: expected a string"},
		{"string decision-ish action", "/access/v1/evaluation", `{"subject":` + sub + `,"action":"can_read_todos","resource":{"type":"todo","id":"todo-1"}}`, 400, "action: expected an object"},
		{"no subject", "/access/v1/evaluation", `{"action":{"name":"can_read_todos"},"resource":{"type":"todo","id":"todo-1"}}`, 400, "subject: missing"},
		{"no subject id", "/access/v1/evaluation", `{"subject":{"type":"user"},"action":{"name":"can_read_todos"},"resource":{"type":"todo","id":"todo-1"}}`, 400, "subject.id: missing"},
		{"unknown subject type", "/access/v1/evaluation", `{"subject":{"type":"robot","id":"r2"},"action":{"name":"can_read_todos"},"resource":{"type":"todo","id":"todo-1"}}`, 400, "subject.type: \"robot\""},
		{"unknown resource type", "/access/v1/evaluation", `{"subject":` + sub + `,"action":{"name":"can_read_todos"},"resource":{"type":"spaceship","id":"1"}}`, 400, "resource.type: \"spaceship\""},
		{"no action", "/access/v1/evaluation", `{"subject":` + sub + `,"resource":{"type":"todo","id":"todo-1"}}`, 400, "action.name: missing"},
		{"ownerID not a string", "/access/v1/evaluation", `{"subject":` + sub + `,"action":{"name":"can_update_todo"},"resource":{"type":"todo","id":"t","properties":{"ownerID":42}}}`, 400, "resource.properties.ownerID"},
		{"bad on_behalf_of", "/access/v1/evaluation", `{"subject":{"type":"user","id":"x","properties":{"on_behalf_of":"alice"}},"action":{"name":"can_read_todos"},"resource":{"type":"todo","id":"todo-1"}}`, 400, "subject.properties.on_behalf_of"},
		{"unknown semantic", "/access/v1/evaluations", `{"subject":` + sub + `,"action":{"name":"can_read_todos"},"options":{"evaluations_semantic":"first_wins"},"evaluations":[{"resource":{"type":"todo","id":"1"}}]}`, 400, "options.evaluations_semantic"},
		{"evaluations not an array", "/access/v1/evaluations", `{"evaluations":{}}`, 400, "evaluations: expected an array"},
		{"bad item", "/access/v1/evaluations", `{"subject":` + sub + `,"action":{"name":"can_read_todos"},"evaluations":[{"resource":{"type":"todo","id":"1"}},{"resource":{"type":"spaceship","id":"1"}}]}`, 400, "evaluations[1].resource.type"},
		{"bad item context", "/access/v1/evaluations", `{"subject":` + sub + `,"action":{"name":"can_update_todo"},"evaluations":[{"resource":{"type":"todo","id":"1","properties":{"ownerID":"morty@the-citadel.com"}}},{"resource":{"type":"todo","id":"2","properties":{"ownerID":true}}}]}`, 400, "evaluations[1].resource.properties.ownerID"},
		{"item without a resource", "/access/v1/evaluations", `{"subject":` + sub + `,"action":{"name":"can_read_todos"},"evaluations":[{}]}`, 400, "evaluations[0].resource: missing"},
		{"search a fixed object", "/access/v1/search/resource", `{"subject":` + sub + `,"action":{"name":"can_read_todos"},"resource":{"type":"todo"}}`, 400, "resource.type"},
		{"subject search without a resource", "/access/v1/search/subject", `{"subject":{"type":"user"},"action":{"name":"can_read_todos"}}`, 400, "resource: missing"},
		{"subject search without a subject type", "/access/v1/search/subject", `{"subject":{},"action":{"name":"can_read_todos"},"resource":{"type":"todo","id":"1"}}`, 400, "subject.type: missing"},
		{"action search without subject", "/access/v1/search/action", `{"resource":{"type":"todo","id":"1"}}`, 400, "subject: missing"},
		{"unknown endpoint", "/access/v1/evaluate", `{}`, 404, "/access/v1/evaluate is not an AuthZEN 1.0 endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, msg := errorOf(t, pdp.post(t, tc.path, tc.body, tc.status))
			if status != tc.status {
				t.Errorf("error.status %d, want %d", status, tc.status)
			}
			if !strings.HasPrefix(msg, tc.member) {
				t.Errorf("message %q does not start with %q", msg, tc.member)
			}
		})
	}
	t.Run("body over the limit", func(t *testing.T) {
		big := `{"subject":` + sub + `,"context":{"pad":"` + strings.Repeat("x", 5<<20) + `"}}`
		status, msg := errorOf(t, pdp.post(t, "/access/v1/evaluation", big, http.StatusRequestEntityTooLarge))
		if status != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "--max-message-size") {
			t.Errorf("%d %q", status, msg)
		}
	})
}

// TestAuthZENAuth: the AuthZEN API takes the server's preshared keys; a
// server without keys ignores whatever Authorization header arrives (the
// interop runner sends "Authorization: undefined").
func TestAuthZENAuth(t *testing.T) {
	pdp := startAuthZEN(t, "todo")
	body := fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":"can_read_todos"},"resource":{"type":"todo","id":"todo-1"}}`, todoUsers[0].pid)
	send := func(base, auth string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodPost, base+"/access/v1/evaluation", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, out
	}
	for _, auth := range []string{"", "undefined", "Bearer wrong-key", "Basic " + authzenKey} {
		status, out := send(pdp.base, auth)
		if status != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401; %s", auth, status, out)
			continue
		}
		if code, _ := errorOf(t, out); code != http.StatusUnauthorized {
			t.Errorf("Authorization %q: error.status %d", auth, code)
		}
	}
	if status, out := send(pdp.base, "Bearer "+authzenKey); status != http.StatusOK || !decisionOf(t, out) {
		t.Errorf("with the key: %d %s", status, out)
	}
	// The metadata is public and names every endpoint on this address.
	resp, err := http.Get(pdp.base + "/.well-known/authzen-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]string
	json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	for k, path := range map[string]string{
		"policy_decision_point": "", "access_evaluation_endpoint": "/access/v1/evaluation", "access_evaluations_endpoint": "/access/v1/evaluations",
		"search_subject_endpoint": "/access/v1/search/subject", "search_resource_endpoint": "/access/v1/search/resource", "search_action_endpoint": "/access/v1/search/action",
	} {
		if meta[k] != pdp.base+path {
			t.Errorf("metadata %s = %q, want %q", k, meta[k], pdp.base+path)
		}
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("metadata: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
