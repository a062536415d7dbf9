package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/authzen"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// BenchmarkAuthZEN compares, on the Search example's data and the same
// server, an AuthZEN evaluation, an AuthZEN evaluations boxcar of 100 and
// the unary mandate.v1 REST check, each over HTTP from parallel clients.
// checks/s counts the checks answered (100 per boxcar).
//
//	go test ./server -run '^$' -bench BenchmarkAuthZEN -benchtime 2s
func BenchmarkAuthZEN(b *testing.B) {
	base := startAuthZENBench(b)
	users := []string{"alice", "bob", "carol", "dan", "erin", "felix"}
	type check struct{ user, record string }
	checks := make([]check, 0, 120)
	for _, u := range users {
		for r := 101; r <= 120; r++ {
			checks = append(checks, check{u, fmt.Sprint(r)})
		}
	}
	var items []string
	for i := 0; i < 100; i++ {
		items = append(items, fmt.Sprintf(`{"resource":{"type":"record","id":%q}}`, checks[i%20].record))
	}
	boxcar := fmt.Sprintf(`{"subject":{"type":"user","id":"alice"},"action":{"name":"view"},"evaluations":[%s]}`, strings.Join(items, ","))
	for _, bc := range []struct {
		name, path string
		perCall    int
		body       func(i int) string
	}{
		{"evaluation", authzen.PathEvaluation, 1, func(i int) string {
			c := checks[i%len(checks)]
			return fmt.Sprintf(`{"subject":{"type":"user","id":%q},"action":{"name":"view"},"resource":{"type":"record","id":%q}}`, c.user, c.record)
		}},
		{"evaluations_100", authzen.PathEvaluations, 100, func(int) string { return boxcar }},
		{"mandate_v1_rest_check", "/v1/permissions/check", 1, func(i int) string {
			c := checks[i%len(checks)]
			return fmt.Sprintf(`{"resource":{"objectType":"record","objectId":%q},"permission":"view","subject":{"object":{"objectType":"user","objectId":%q}}}`, c.record, c.user)
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					req, _ := http.NewRequest(http.MethodPost, base+bc.path, strings.NewReader(bc.body(i)))
					req.Header.Set("Authorization", "Bearer "+auditBenchKey)
					req.Header.Set("Content-Type", "application/json")
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"decision"`)) {
						b.Errorf("%d %s", resp.StatusCode, body)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*bc.perCall)/time.Since(start).Seconds(), "checks/s")
		})
	}
}

func startAuthZENBench(b *testing.B) string {
	b.Helper()
	ctx := context.Background()
	dir := "../examples/authzen/search/"
	st := memory.New()
	schemaText, err := os.ReadFile(dir + "schema.zed")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.WriteSchema(ctx, string(schemaText)); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(dir + "relationships.txt")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var muts []store.Mutation
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "//") {
			continue
		}
		r, err := rel.Parse(line)
		if err != nil {
			b.Fatal(err)
		}
		muts = append(muts, store.Mutation{Op: store.Touch, Rel: r})
	}
	if _, err := st.Write(ctx, nil, muts); err != nil {
		b.Fatal(err)
	}
	mapping, err := authzen.LoadMapping(dir + "mapping.yaml")
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(st, engine.New(), Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", PresharedKeys: []string{auditBenchKey},
		ShutdownGracePeriod: 5 * time.Second, AuthZEN: mapping})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	for !srv.Ready() {
		time.Sleep(time.Millisecond)
	}
	return "http://" + srv.HTTPAddr().String()
}
