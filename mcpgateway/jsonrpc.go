package mcpgateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// JSON-RPC and MCP error codes the gateway answers with.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	// CodeHeaderMismatch is the MCP error for Mcp-Method or Mcp-Name headers
	// that disagree with the body (revision 2026-07-28).
	CodeHeaderMismatch = -32020
	// CodeDenied is a call Mandate did not allow; the error's data carries
	// the reason and chain.
	CodeDenied = -32051
	// CodeUnavailable is a call that could not be decided (Mandate
	// unreachable): refused, never forwarded.
	CodeUnavailable = -32052
	// CodeSessionNotFound answers a session ID the gateway does not know
	// for this caller; the client starts a new session.
	CodeSessionNotFound = -32001
)

// message is one JSON-RPC message as the gateway reads it.
type message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   json.RawMessage `json:"error,omitempty"`
}

func (m *message) isRequest() bool { return m.Method != "" && len(m.ID) > 0 }

// rpcError is a refusal answered as a JSON-RPC error with an HTTP status.
type rpcError struct {
	status  int
	code    int
	message string
	data    any
	// result, when set, is answered as the call's result instead of an
	// error: an input_required result (revision 2026-07-28).
	result any
}

func (e *rpcError) Error() string { return e.message }

func badRequest(code int, format string, args ...any) *rpcError {
	return &rpcError{status: http.StatusBadRequest, code: code, message: fmt.Sprintf(format, args...)}
}

// parseMessage reads one JSON-RPC message, refusing batches (removed from
// MCP in 2025-06-18), duplicate keys (which parsers resolve differently, so
// the gateway and the MCP server could read different calls) and anything
// that is not a request, notification or response.
func parseMessage(body []byte) (*message, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, badRequest(CodeInvalidRequest, "empty body: expected one JSON-RPC message")
	}
	if trimmed[0] == '[' {
		return nil, badRequest(CodeInvalidRequest, "JSON-RPC batches are not accepted: send one message per request")
	}
	if err := checkUniqueKeys(body); err != nil {
		return nil, badRequest(CodeParseError, "malformed JSON: %v", err)
	}
	var m message
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&m); err != nil {
		return nil, badRequest(CodeParseError, "malformed JSON: %v", err)
	}
	if dec.More() {
		return nil, badRequest(CodeParseError, "malformed JSON: data after the message")
	}
	if m.JSONRPC != "2.0" {
		return nil, badRequest(CodeInvalidRequest, `jsonrpc: expected "2.0"`)
	}
	if len(m.ID) > 0 && m.ID[0] != '"' && (m.ID[0] < '0' || m.ID[0] > '9') && m.ID[0] != '-' {
		return nil, badRequest(CodeInvalidRequest, "id: expected a string or a number")
	}
	switch {
	case m.Method != "":
		if len(m.Result) > 0 || len(m.Error) > 0 {
			return nil, badRequest(CodeInvalidRequest, "a request carries no result or error")
		}
		if len(m.Params) > 0 && m.Params[0] != '{' {
			return nil, badRequest(CodeInvalidParams, "params: expected an object")
		}
	case len(m.ID) > 0 && (len(m.Result) > 0) != (len(m.Error) > 0):
		// A response to a request the server sent (elicitation, sampling).
	default:
		return nil, badRequest(CodeInvalidRequest, "expected a request (method), a notification or a response (result or error)")
	}
	return &m, nil
}

// checkUniqueKeys refuses an object with two keys equal up to case, at any
// depth: some decoders match keys case-insensitively and some take the
// first of duplicates, so only a message without them means the same to
// every reader. It scans the bytes once the body is known to be valid
// JSON (the token decoder it replaced was a tenth of the gateway's CPU
// per call); FuzzCheckUniqueKeys holds it to that decoder's answers.
func checkUniqueKeys(body []byte) error {
	if !json.Valid(body) {
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return err
		}
		return errors.New("invalid JSON")
	}
	var stack []keyFrame
	wantKey := false // the next string is a key of the innermost object
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '{':
			stack = append(stack, keyFrame{object: true})
			wantKey = true
		case '[':
			stack = append(stack, keyFrame{})
			wantKey = false
		case '}', ']':
			stack = stack[:len(stack)-1]
			wantKey = false
		case ',':
			wantKey = len(stack) > 0 && stack[len(stack)-1].object
		case '"':
			end := stringEnd(body, i)
			if wantKey {
				key, err := keyText(body[i : end+1])
				if err != nil {
					return err
				}
				if err := stack[len(stack)-1].add(key); err != nil {
					return err
				}
				wantKey = false
			}
			i = end
		}
	}
	return nil
}

// stringEnd returns the index of the quote closing the string that opens
// at body[start], in valid JSON.
func stringEnd(body []byte, start int) int {
	for i := start + 1; ; i++ {
		switch body[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
}

// keyText is a key's text, lowercased: quoted is the key with its quotes,
// unescaped only when it holds an escape.
func keyText(quoted []byte) (string, error) {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return strings.ToLower(string(quoted[1 : len(quoted)-1])), nil
	}
	var k string
	if err := json.Unmarshal(quoted, &k); err != nil {
		return "", err
	}
	return strings.ToLower(k), nil
}

// keyFrame is an open object (object true, with the keys read so far) or
// array.
type keyFrame struct {
	object bool
	keys   []string // a slice: MCP messages' objects hold a few keys
	set    map[string]struct{}
}

// maxListedKeys is how many keys an object's frame compares one by one
// before it indexes them.
const maxListedKeys = 16

func (f *keyFrame) add(key string) error {
	dup := false
	if f.set != nil {
		_, dup = f.set[key]
		f.set[key] = struct{}{}
	} else {
		dup = slices.Contains(f.keys, key)
		f.keys = append(f.keys, key)
		if len(f.keys) > maxListedKeys {
			f.set = make(map[string]struct{}, 2*len(f.keys))
			for _, k := range f.keys {
				f.set[k] = struct{}{}
			}
			f.keys = nil
		}
	}
	if dup {
		return fmt.Errorf("key %q appears twice in one object", key)
	}
	return nil
}

// writeRPCError answers a request with a JSON-RPC error.
func writeRPCError(w http.ResponseWriter, id json.RawMessage, e *rpcError) {
	type errBody struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    any    `json:"data,omitempty"`
	}
	body := struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   *errBody        `json:"error,omitempty"`
		Result  any             `json:"result,omitempty"`
	}{JSONRPC: "2.0", ID: id, Result: e.result}
	if e.result == nil {
		body.Error = &errBody{e.code, e.message, e.data}
	}
	if len(body.ID) == 0 {
		body.ID = json.RawMessage("null")
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	status := e.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
