package mcpgateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
// every reader.
func checkUniqueKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var stack []*keyFrame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if n := len(stack); n > 0 && stack[n-1].keys != nil && stack[n-1].wantKey {
			top := stack[n-1]
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = valueDone(stack[:n-1])
				continue
			}
			k := strings.ToLower(tok.(string))
			if _, dup := top.keys[k]; dup {
				return fmt.Errorf("key %q appears twice in one object", tok)
			}
			top.keys[k] = struct{}{}
			top.wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &keyFrame{keys: map[string]struct{}{}, wantKey: true})
		case json.Delim('['):
			stack = append(stack, &keyFrame{})
		case json.Delim('}'), json.Delim(']'):
			stack = valueDone(stack[:len(stack)-1])
		default:
			stack = valueDone(stack)
		}
	}
}

// keyFrame is an open object (keys non-nil) or array.
type keyFrame struct {
	keys    map[string]struct{}
	wantKey bool
}

// valueDone records that a value of the enclosing object was read, so its
// next token is a key.
func valueDone(stack []*keyFrame) []*keyFrame {
	if n := len(stack); n > 0 && stack[n-1].keys != nil {
		stack[n-1].wantKey = true
	}
	return stack
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
