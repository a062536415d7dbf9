package mcpgateway

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
)

// responseTap sits between the MCP server and the client. It can read the
// response headers (onHeader, to bind a new session) and rewrite list
// results (filter, for the responses match selects) in a JSON body or in
// an SSE stream, event by event. Every other byte passes unchanged.
type responseTap struct {
	w        http.ResponseWriter
	onHeader func(http.Header)
	match    func(id json.RawMessage) (method string, ok bool)
	filter   func(method string, result json.RawMessage) (json.RawMessage, error)

	wroteHeader bool
	status      int
	mode        tapMode
	buf         bytes.Buffer
}

type tapMode int

const (
	modePass tapMode = iota
	modeJSON         // buffered until the handler returns
	modeSSE          // rewritten event by event
)

func (t *responseTap) Header() http.Header { return t.w.Header() }

// Unwrap lets http.ResponseController reach the real writer.
func (t *responseTap) Unwrap() http.ResponseWriter { return t.w }

func (t *responseTap) WriteHeader(status int) {
	if t.wroteHeader {
		return
	}
	t.wroteHeader = true
	t.status = status
	if t.onHeader != nil {
		t.onHeader(t.w.Header())
	}
	if t.filter != nil && status == http.StatusOK {
		ct, _, _ := mime.ParseMediaType(t.w.Header().Get("Content-Type"))
		switch ct {
		case "application/json":
			t.mode = modeJSON
			t.w.Header().Del("Content-Length")
			return // written by finish, once the body is rewritten
		case "text/event-stream":
			t.mode = modeSSE
			t.w.Header().Del("Content-Length")
		}
	}
	t.w.WriteHeader(status)
}

func (t *responseTap) Write(p []byte) (int, error) {
	if !t.wroteHeader {
		t.WriteHeader(http.StatusOK)
	}
	switch t.mode {
	case modeJSON:
		return t.buf.Write(p)
	case modeSSE:
		t.buf.Write(p)
		if err := t.drainEvents(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return t.w.Write(p)
}

func (t *responseTap) Flush() {
	if t.mode == modeJSON {
		return
	}
	http.NewResponseController(t.w).Flush()
}

// finish writes what is still buffered once the handler has returned.
func (t *responseTap) finish() {
	switch t.mode {
	case modeJSON:
		body := t.rewrite(t.buf.Bytes())
		t.w.WriteHeader(t.status)
		t.w.Write(body)
	case modeSSE:
		// An unterminated last event is incomplete: a list response in it
		// cannot be filtered, so it is dropped; anything else passes.
		if t.buf.Len() > 0 {
			if _, _, ok := t.eventResponse(t.buf.Bytes()); !ok {
				t.w.Write(t.buf.Bytes())
			}
		}
	}
}

// drainEvents writes every complete event in the buffer.
func (t *responseTap) drainEvents() error {
	for {
		b := t.buf.Bytes()
		end, sepLen := eventEnd(b)
		if end < 0 {
			return nil
		}
		ev := b[:end+sepLen]
		out := ev
		if data, lines, ok := t.eventResponse(b[:end]); ok {
			out = rebuildEvent(lines, t.rewrite(data))
		}
		if _, err := t.w.Write(out); err != nil {
			return err
		}
		t.buf.Next(end + sepLen)
		http.NewResponseController(t.w).Flush()
	}
}

// eventEnd finds the blank line that ends an SSE event.
func eventEnd(b []byte) (int, int) {
	best, sep := -1, 0
	for _, s := range []string{"\n\n", "\r\n\r\n", "\r\r"} {
		if i := bytes.Index(b, []byte(s)); i >= 0 && (best < 0 || i < best) {
			best, sep = i, len(s)
		}
	}
	return best, sep
}

// eventResponse reports whether an event carries a response to filter,
// returning its data and its other lines.
func (t *responseTap) eventResponse(ev []byte) (data []byte, others [][]byte, ok bool) {
	var dataLines [][]byte
	for _, line := range bytes.FieldsFunc(ev, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if v, found := bytes.CutPrefix(line, []byte("data:")); found {
			dataLines = append(dataLines, bytes.TrimPrefix(v, []byte(" ")))
		} else {
			others = append(others, line)
		}
	}
	if len(dataLines) == 0 {
		return nil, nil, false
	}
	data = bytes.Join(dataLines, []byte("\n"))
	if !t.isMatch(data) {
		return nil, nil, false
	}
	return data, others, true
}

func (t *responseTap) isMatch(data []byte) bool {
	var m struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if json.Unmarshal(data, &m) != nil || len(m.ID) == 0 || m.Method != "" {
		return false
	}
	_, ok := t.match(m.ID)
	return ok
}

// rewrite filters the result of a matching response; a result that cannot
// be filtered becomes an error, never the unfiltered list.
func (t *responseTap) rewrite(data []byte) []byte {
	var m message
	if json.Unmarshal(data, &m) != nil || len(m.ID) == 0 {
		return data
	}
	method, ok := t.match(m.ID)
	if !ok || len(m.Result) == 0 {
		return data
	}
	res, err := t.filter(method, m.Result)
	if err != nil {
		b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m.ID, "error": map[string]any{
			"code": CodeUnavailable, "message": "the list could not be filtered (Mandate unavailable): withheld"}})
		return b
	}
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m.ID, "result": json.RawMessage(res)})
	return b
}

func rebuildEvent(lines [][]byte, data []byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	b.WriteString("data: ")
	b.Write(data)
	b.WriteString("\n\n")
	return b.Bytes()
}
