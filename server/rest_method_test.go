package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestRESTWrongMethod: GET on a POST route answers 405 with Allow: POST
// (it once answered 501), and every route of the OpenAPI document is a
// POST, which is what that Allow header assumes.
func TestRESTWrongMethod(t *testing.T) {
	ts := startServer(t, nil)
	req, _ := http.NewRequestWithContext(ts.ctx(), http.MethodGet, ts.base+"/v1/permissions/check", nil)
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost || !strings.Contains(string(body), "method not allowed") {
		t.Errorf("GET /v1/permissions/check: HTTP %d, Allow %q, %s", resp.StatusCode, resp.Header.Get("Allow"), body)
	}
	// An unknown path is still 404.
	resp, err = http.Post(ts.base+"/v1/no/such/route", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown route: HTTP %d, want 404", resp.StatusCode)
	}

	resp, err = http.Get(ts.base + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	err = json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if err != nil || len(doc.Paths) == 0 {
		t.Fatalf("openapi.json: %v, %d paths", err, len(doc.Paths))
	}
	for path, methods := range doc.Paths {
		for m := range methods {
			if m != "post" && m != "parameters" {
				t.Errorf("%s %s: a REST route that is not a POST; restRoutingError's Allow header must learn it", strings.ToUpper(m), path)
			}
		}
	}
}
