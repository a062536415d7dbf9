package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

func TestRESTEndToEnd(t *testing.T) {
	ts := startServer(t, nil)

	code, body := ts.restCall("/v1/schema/write", testKey, map[string]any{"schema": testSchema})
	if code != http.StatusOK {
		t.Fatalf("schema write: HTTP %d %v", code, body)
	}

	ownerAbsent := map[string]any{"operation": "OPERATION_MUST_NOT_MATCH", "filter": map[string]any{"resourceType": "doc", "optionalRelation": "owner"}}
	carl := jsonRel("doc", "readme", "viewer", "user", "carl")
	carl["optionalCaveat"] = map[string]any{"caveatName": "within_limit", "context": map[string]any{"limit": 100}}
	write := map[string]any{
		"updates": []any{
			map[string]any{"operation": "OPERATION_CREATE", "relationship": jsonRel("doc", "readme", "owner", "user", "ann")},
			map[string]any{"operation": "OPERATION_CREATE", "relationship": carl},
		},
		"optionalPreconditions": []any{ownerAbsent},
	}
	code, body = ts.restCall("/v1/relationships/write", testKey, write)
	if code != http.StatusOK {
		t.Fatalf("write: HTTP %d %v", code, body)
	}
	token := body["writtenAt"].(map[string]any)["token"].(string)

	t.Run("failed precondition is a 400 naming it, and writes nothing", func(t *testing.T) {
		before := ts.state()
		code, body := ts.restCall("/v1/relationships/write", testKey, write)
		if code != http.StatusBadRequest || body["code"].(float64) != 9 || !strings.Contains(body["message"].(string), "precondition") {
			t.Errorf("HTTP %d %v", code, body)
		}
		if !ts.state().equal(before) {
			t.Error("store changed")
		}
	})

	t.Run("checks with context", func(t *testing.T) {
		cases := []struct {
			subject string
			context map[string]any
			want    string
		}{
			{"ann", nil, "DECISION_ALLOWED"},
			{"carl", map[string]any{"amount": 10}, "DECISION_ALLOWED"},
			{"carl", map[string]any{"amount": 1000}, "DECISION_DENIED"},
			{"carl", nil, "DECISION_CONDITIONAL"},
			{"zed", nil, "DECISION_DENIED"},
		}
		for _, c := range cases {
			req := map[string]any{
				"consistency": map[string]any{"atLeastAsFresh": map[string]any{"token": token}},
				"resource":    map[string]any{"objectType": "doc", "objectId": "readme"},
				"permission":  "view",
				"subject":     map[string]any{"object": map[string]any{"objectType": "user", "objectId": c.subject}},
			}
			if c.context != nil {
				req["context"] = c.context
			}
			code, body := ts.restCall("/v1/permissions/check", testKey, req)
			if code != http.StatusOK || body["decision"] != c.want {
				t.Errorf("%s %v: HTTP %d %v, want %s", c.subject, c.context, code, body, c.want)
			}
			if c.want == "DECISION_CONDITIONAL" {
				if m, _ := body["missingParameters"].([]any); len(m) != 1 || m[0] != "amount" {
					t.Errorf("missing parameters = %v", body["missingParameters"])
				}
			}
		}
	})

	t.Run("check bulk", func(t *testing.T) {
		code, body := ts.restCall("/v1/permissions/checkbulk", testKey, map[string]any{
			"consistency": map[string]any{"fullyConsistent": true},
			"items": []any{
				map[string]any{"resource": map[string]any{"objectType": "doc", "objectId": "readme"}, "permission": "edit", "subject": map[string]any{"object": map[string]any{"objectType": "user", "objectId": "ann"}}},
				map[string]any{"resource": map[string]any{"objectType": "nope", "objectId": "readme"}, "permission": "edit", "subject": map[string]any{"object": map[string]any{"objectType": "user", "objectId": "ann"}}},
			},
		})
		if code != http.StatusOK {
			t.Fatalf("HTTP %d %v", code, body)
		}
		pairs := body["pairs"].([]any)
		first := pairs[0].(map[string]any)["item"].(map[string]any)["decision"]
		second := pairs[1].(map[string]any)["error"].(map[string]any)["message"].(string)
		if first != "DECISION_ALLOWED" || !strings.Contains(second, "nope") {
			t.Errorf("pairs = %v", pairs)
		}
	})

	t.Run("lookups stream", func(t *testing.T) {
		got := ts.restStream("/v1/permissions/resources", map[string]any{
			"consistency":        map[string]any{"atLeastAsFresh": map[string]any{"token": token}},
			"resourceObjectType": "doc", "permission": "view",
			"subject": map[string]any{"object": map[string]any{"objectType": "user", "objectId": "carl"}},
			"context": map[string]any{"amount": 1},
		})
		if len(got) != 1 || got[0]["resourceObjectId"] != "readme" || got[0]["decision"] != "DECISION_ALLOWED" {
			t.Errorf("lookup resources = %v", got)
		}
		subs := ts.restStream("/v1/permissions/subjects", map[string]any{
			"consistency": map[string]any{"atLeastAsFresh": map[string]any{"token": token}},
			"resource":    map[string]any{"objectType": "doc", "objectId": "readme"}, "permission": "view", "subjectObjectType": "user",
		})
		var ids []string
		for _, s := range subs {
			ids = append(ids, s["subjectObjectId"].(string)+":"+s["decision"].(string))
		}
		if strings.Join(ids, " ") != "ann:DECISION_ALLOWED carl:DECISION_CONDITIONAL" {
			t.Errorf("lookup subjects = %v", ids)
		}
	})

	t.Run("expand and read", func(t *testing.T) {
		code, body := ts.restCall("/v1/permissions/expand", testKey, map[string]any{
			"consistency": map[string]any{"atLeastAsFresh": map[string]any{"token": token}},
			"resource":    map[string]any{"objectType": "doc", "objectId": "readme"}, "permission": "edit",
		})
		if code != http.StatusOK || body["tree"] == nil {
			t.Errorf("expand: HTTP %d %v", code, body)
		}
		rels := ts.restStream("/v1/relationships/read", map[string]any{"filter": map[string]any{"resourceType": "doc"}})
		if len(rels) != 2 {
			t.Errorf("read %d relationships, want 2: %v", len(rels), rels)
		}
		code, body = ts.restCall("/v1/schema/read", testKey, map[string]any{})
		if code != http.StatusOK || body["schemaText"] != testSchema {
			t.Errorf("schema read: HTTP %d %v", code, body)
		}
	})

	t.Run("watch", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.base+"/v1/watch",
			strings.NewReader(`{"optionalStartCursor":{"token":"`+token+`"}}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		// The gateway sends the response headers with the first event, so
		// write while the request is pending; the start cursor makes the
		// outcome independent of timing.
		later := update(touch, mustParse(t, "doc:later#viewer@user:bob")...)
		written := make(chan string, 1)
		go func() {
			time.Sleep(20 * time.Millisecond)
			resp, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: later})
			if err != nil {
				written <- "error: " + err.Error()
				return
			}
			written <- resp.GetWrittenAt().GetToken()
		}()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("watch: HTTP %d", resp.StatusCode)
		}
		wrote := <-written
		line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var msg struct {
			Result struct {
				Updates []struct {
					Operation    string
					Relationship map[string]any
				}
				ChangesThrough struct{ Token string }
			}
		}
		if err := json.Unmarshal(line, &msg); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if len(msg.Result.Updates) != 1 || msg.Result.ChangesThrough.Token != wrote {
			t.Errorf("watch event = %s", line)
		}
	})

	t.Run("import and export", func(t *testing.T) {
		var body bytes.Buffer
		for b := range 2 {
			var rels []any
			for i := range 3 {
				rels = append(rels, jsonRel("doc", "imp"+string(rune('a'+b))+string(rune('0'+i)), "viewer", "user", "dee"))
			}
			json.NewEncoder(&body).Encode(map[string]any{"relationships": rels})
		}
		code, resp := ts.restCall("/v1/relationships/import", testKey, body.Bytes())
		if code != http.StatusOK || resp["numLoaded"] != "6" {
			t.Fatalf("import: HTTP %d %v", code, resp)
		}
		imported := resp["writtenAt"].(map[string]any)["token"].(string)
		batches := ts.restStream("/v1/relationships/export", map[string]any{
			"consistency":       map[string]any{"atExactSnapshot": map[string]any{"token": imported}},
			"optionalBatchSize": 4,
		})
		total := 0
		for _, b := range batches {
			total += len(b["relationships"].([]any))
		}
		// ann, carl, bob's later doc and six imported.
		if len(batches) != 3 || total != 9 {
			t.Errorf("export: %d batches, %d relationships", len(batches), total)
		}
	})

	t.Run("service endpoints", func(t *testing.T) {
		for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/openapi.json": 200} {
			resp := ts.restRaw(http.MethodGet, path, "", nil)
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
			}
			if path == "/openapi.json" {
				var doc struct {
					Swagger string
					Paths   map[string]any
				}
				if err := json.Unmarshal(raw, &doc); err != nil || doc.Swagger != "2.0" || doc.Paths["/v1/permissions/check"] == nil {
					t.Errorf("openapi document: %v, %d paths", err, len(doc.Paths))
				}
			}
		}
	})
}
