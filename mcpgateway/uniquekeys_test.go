package mcpgateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzCheckUniqueKeys holds the byte scanner to the answers of a reading
// by encoding/json's token decoder: for valid JSON both refuse exactly the
// same bodies, and invalid JSON is always refused.
func FuzzCheckUniqueKeys(f *testing.F) {
	for _, seed := range []string{
		`{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}`, `{"a":1,"a":2}`, `{"a":{"x":1,"X":2}}`,
		`{"a":[{"k":1,"k":1}]}`, `{"a":"{\"k\":1,\"k\":2}"}`, `{"\u0041":1,"a":2}`, `{"a\"":1,"a\\":2}`,
		`{"K":1,"k":2}`, `[{"a":1},{"a":1}]`, `{"a":[1,"b",{"c":{"d":[]}}],"e":null}`, `{} {}`, `{"a":1`,
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"a":18}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := checkUniqueKeys(body)
		if !json.Valid(body) {
			if got == nil {
				t.Fatalf("%q: invalid JSON accepted", body)
			}
			return
		}
		if want := tokenUniqueKeys(body); (got == nil) != (want == nil) {
			t.Fatalf("%q: scanner says %v, token decoder says %v", body, got, want)
		}
	})
}

// tokenUniqueKeys is the reference: the same rule read through
// encoding/json's token decoder.
func tokenUniqueKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	type frame struct {
		keys    map[string]bool
		wantKey bool
	}
	var stack []*frame
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].keys != nil {
			stack[n-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if n := len(stack); n > 0 && stack[n-1].keys != nil && stack[n-1].wantKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:n-1]
				valueDone()
				continue
			}
			k := strings.ToLower(tok.(string))
			if stack[n-1].keys[k] {
				return errors.New("duplicate key " + k)
			}
			stack[n-1].keys[k] = true
			stack[n-1].wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, wantKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone()
		default:
			valueDone()
		}
	}
}
