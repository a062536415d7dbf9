package schema_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/authzed/spicedb/pkg/caveats"
	caveattypes "github.com/authzed/spicedb/pkg/caveats/types"
	"github.com/authzed/spicedb/pkg/schemadsl/compiler"
	"github.com/authzed/spicedb/pkg/schemadsl/input"

	"github.com/mandate-authz/mandate/schema"
)

// caveatSchema declares caveats over every parameter type; goodValue and
// badValue make well and wrongly typed JSON values for each.
const caveatSchema = `
caveat cmp(a int, b int) { a < b }
caveat scope(action string, allowed list<string>) { action in allowed }
caveat either(x bool, y bool) { x || y }
caveat both(x bool, y bool) { x && y }
caveat lookup(m map<string>, k string) { k in m && m[k] == "v" }
caveat network(ip ipaddress, cidr string) { ip.in_cidr(cidr) }
caveat window(t timestamp, d duration) { t + d > timestamp("2025-01-01T00:00:00Z") }
caveat mixed(n uint, d double, s string) { n > 2 && d > 1.0 || s.startsWith("ok") }
`

func goodValue(r *rand.Rand, typ string) any {
	switch typ {
	case "int":
		return float64(r.IntN(7) - 3)
	case "uint":
		return float64(r.IntN(5))
	case "double":
		return float64(r.IntN(9)) / 2
	case "bool":
		return r.IntN(2) == 0
	case "string":
		return []string{"view", "edit", "ok-go", "10.0.0.0/8", "192.168.0.0/16", "k"}[r.IntN(6)]
	case "list<string>":
		return []any{"view", "edit", "admin"}[:r.IntN(4)]
	case "map<string>":
		return map[string]any{"k": []string{"v", "w"}[r.IntN(2)], "j": "v"}
	case "ipaddress":
		return []string{"10.1.2.3", "192.168.1.1", "8.8.8.8"}[r.IntN(3)]
	case "timestamp":
		return []string{"2024-12-31T23:00:00Z", "2025-06-01T00:00:00Z"}[r.IntN(2)]
	case "duration":
		return []string{"30m", "2h", "0s"}[r.IntN(3)]
	}
	panic("no values for " + typ)
}

func badValue(r *rand.Rand, typ string) any {
	if typ == "string" || typ == "ipaddress" || typ == "timestamp" || typ == "duration" {
		return []any{1.5, true}[r.IntN(2)]
	}
	return "not-a-" + typ
}

// randomContext sets a random subset of the caveat's parameters, now and
// then with a wrongly typed value, plus a key the caveat does not declare.
func randomContext(r *rand.Rand, params map[string]string, badRate int) map[string]any {
	if r.IntN(5) == 0 {
		return nil
	}
	ctx := map[string]any{}
	for _, name := range slices.Sorted(maps.Keys(params)) {
		switch r.IntN(3) {
		case 0:
			continue
		default:
			if badRate > 0 && r.IntN(badRate) == 0 {
				ctx[name] = badValue(r, params[name])
			} else {
				ctx[name] = goodValue(r, params[name])
			}
		}
	}
	if r.IntN(4) == 0 {
		ctx["undeclared"] = "ignored"
	}
	return ctx
}

// TestCaveatEvaluationMatchesSpiceDB evaluates random request and
// relationship contexts with Mandate's compiled programs and with SpiceDB's
// own caveat evaluation (merge, convert, evaluate, as its checks do), and
// requires the same outcome, the same missing parameters, and an error
// exactly when SpiceDB fails.
func TestCaveatEvaluationMatchesSpiceDB(t *testing.T) {
	ctx := context.Background()
	sch, err := schema.Compile(ctx, caveatSchema)
	if err != nil {
		t.Fatal(err)
	}
	compiled, err := compiler.Compile(compiler.InputSchema{Source: input.Source("caveats"), SchemaString: caveatSchema}, compiler.AllowUnprefixedObjectType())
	if err != nil {
		t.Fatal(err)
	}
	ts := caveattypes.Default.TypeSet
	r := rand.New(rand.NewPCG(7, 11))
	for _, cd := range compiled.CaveatDefinitions {
		ours := sch.Caveats[cd.Name]
		vars, err := caveattypes.DecodeParameterTypes(ts, cd.ParameterTypes)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := caveats.DeserializeCaveatWithTypeSet(ts, cd.SerializedExpression, vars)
		if err != nil {
			t.Fatal(err)
		}
		counts := map[string]int{}
		for i := 0; i < 400; i++ {
			request := randomContext(r, ours.Params, 6)
			relationship := randomContext(r, ours.Params, 0)
			name := fmt.Sprintf("%s/%d request=%v relationship=%v", cd.Name, i, request, relationship)

			merged := map[string]any{}
			maps.Copy(merged, request)
			maps.Copy(merged, relationship)
			var want *caveats.CaveatResult
			converted, wantErr := caveats.ConvertContextToParameters(ts, merged, cd.ParameterTypes, caveats.SkipUnknownParameters)
			if wantErr == nil {
				want, wantErr = caveats.EvaluateCaveat(theirs, converted)
			}
			got, err := ours.Evaluate(context.Background(), request, relationship, nil)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("%s: error %v, SpiceDB's error %v", name, err, wantErr)
			}
			if err != nil {
				counts["error"]++
				continue
			}
			var wantOutcome schema.Outcome
			var wantMissing []string
			switch {
			case want.IsPartial():
				wantOutcome = schema.Unknown
				wantMissing, err = want.MissingVarNames()
				if err != nil {
					t.Fatal(err)
				}
				// SpiceDB names a parameter once per use; Mandate once.
				slices.Sort(wantMissing)
				wantMissing = slices.Compact(wantMissing)
			case want.Value():
				wantOutcome = schema.True
			default:
				wantOutcome = schema.False
			}
			if got.Outcome != wantOutcome || !slices.Equal(got.Missing, wantMissing) {
				t.Fatalf("%s: got %v missing %v, SpiceDB %v missing %v", name, got.Outcome, got.Missing, wantOutcome, wantMissing)
			}
			counts[got.Outcome.String()]++
		}
		// The cases must exercise every kind of result.
		for _, k := range []string{"true", "false", "unknown", "error"} {
			if counts[k] == 0 {
				t.Errorf("%s: no case came out %s (%v); adjust the value pools", cd.Name, k, counts)
			}
		}
	}
}

// TestConvertedContextIsReusable checks that one conversion serves many
// evaluations, and that a wrongly typed value is an error only where it is
// used: overridden by the relationship, it is ignored, as in a merged context.
func TestConvertedContextIsReusable(t *testing.T) {
	sch, err := schema.Compile(context.Background(), `caveat scope(action string, allowed list<string>) { action in allowed }`)
	if err != nil {
		t.Fatal(err)
	}
	c := sch.Caveats["scope"]
	rel := c.Convert(map[string]any{"allowed": []any{"view"}})
	for _, tt := range []struct {
		name     string
		request  map[string]any
		supplied map[string]any
		want     schema.Outcome
		wantErr  bool
	}{
		{"allowed", map[string]any{"action": "view"}, nil, schema.True, false},
		{"not allowed", map[string]any{"action": "edit"}, nil, schema.False, false},
		{"missing", nil, nil, schema.Unknown, false},
		{"supplied wins", map[string]any{"action": "edit"}, map[string]any{"action": "view"}, schema.True, false},
		{"bad request value used", map[string]any{"action": 3.0}, nil, 0, true},
		{"bad request value overridden", map[string]any{"action": 3.0, "allowed": 1.0}, map[string]any{"action": "view"}, schema.True, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for range 3 {
				res, err := c.EvaluateConverted(context.Background(), c.Convert(tt.request), rel, c.Convert(tt.supplied))
				if tt.wantErr {
					if err == nil {
						t.Fatalf("want an error, got %v", res.Outcome)
					}
					return
				}
				if err != nil || res.Outcome != tt.want {
					t.Fatalf("got %v, %v; want %v", res.Outcome, err, tt.want)
				}
			}
		})
	}
}
