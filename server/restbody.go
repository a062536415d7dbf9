package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// oneJSONValue refuses a REST request body that is not exactly one JSON
// value: grpc-gateway decodes the first value and ignores whatever follows,
// so `{...} garbage` or two objects would be a different request than the
// caller wrote. It also words JSON syntax errors itself: encoding/json
// quotes the offending byte as a character, so a stray "é" read as "Ã".
// Import bodies are a stream of values and pass through. Bodies are
// already bounded by limitBody.
func oneJSONValue(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.URL.Path == "/v1/relationships/import" {
			h.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeHTTPError(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted,
					fmt.Sprintf("request body exceeds the limit of %d bytes (--max-message-size)", tooBig.Limit))
				return
			}
			writeHTTPError(w, http.StatusBadRequest, codes.InvalidArgument, "reading the request body: "+err.Error())
			return
		}
		if msg := checkOneJSONValue(body); msg != "" {
			writeHTTPError(w, http.StatusBadRequest, codes.InvalidArgument, "request body: "+msg)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		h.ServeHTTP(w, r)
	})
}

// checkOneJSONValue returns why body is not one JSON value (with optional
// surrounding whitespace), or "". An empty body passes: the gateway treats
// it as an empty request.
func checkOneJSONValue(body []byte) string {
	if len(bytes.TrimSpace(body)) == 0 {
		return ""
	}
	if !utf8.Valid(body) {
		i := firstInvalidUTF8(body)
		return fmt.Sprintf("not valid UTF-8 at byte %d; JSON must be UTF-8", i)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return syntaxMessage(body, syn.Offset)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return "not valid JSON: it ends in the middle of a value"
		}
		return "not valid JSON: " + err.Error()
	}
	if rest := bytes.TrimSpace(body[dec.InputOffset():]); len(rest) > 0 {
		return fmt.Sprintf("unexpected %s after the JSON value at byte %d; send exactly one JSON object",
			near(rest), int(dec.InputOffset())+bytes.Index(body[dec.InputOffset():], rest[:1]))
	}
	return ""
}

// syntaxMessage says where JSON syntax broke, showing the text there as
// UTF-8.
func syntaxMessage(body []byte, offset int64) string {
	at := int(offset) - 1 // the offending byte
	if at < 0 {
		at = 0
	}
	for at > 0 && at < len(body) && !utf8.RuneStart(body[at]) {
		at--
	}
	if at >= len(body) {
		return "not valid JSON: it ends in the middle of a value"
	}
	return fmt.Sprintf("not valid JSON at byte %d: unexpected %s", at, near(body[at:]))
}

// near quotes the start of b, at most 16 characters.
func near(b []byte) string {
	s := string(b)
	if utf8.RuneCountInString(s) > 16 {
		n := 0
		for i := range s {
			if n == 16 {
				return strconv.Quote(s[:i]) + "..."
			}
			n++
		}
	}
	return strconv.Quote(s)
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// restError is the gateway's error handler: grpc-gateway's, except for
// RESOURCE_EXHAUSTED, which it always answers 429 Too Many Requests. Here
// 429 (with Retry-After) is for a call to retry later, one whose status
// carries a google.rpc.RetryInfo (a key over its rate or concurrency
// limit); a message over the size limit is 413, and other limits (a check
// deeper than the server's maximum) 422, since retrying cannot help.
//
// Errors from the gateway itself (an unknown JSON field, say) are capped as
// the gRPC server's are.
func restError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	err = capStatus(status.Convert(err).Err())
	st := status.Convert(err)
	if st.Code() == codes.ResourceExhausted {
		code := http.StatusUnprocessableEntity
		switch retry := retryAfter(st); {
		case retry > 0:
			code = http.StatusTooManyRequests
			w.Header().Set("Retry-After", strconv.Itoa(retry))
		case strings.Contains(st.Message(), "message larger than max"):
			code = http.StatusRequestEntityTooLarge
		}
		w = statusWriter{w, code}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// retryAfter is a status's RetryInfo delay in whole seconds, rounded up
// (at least 1), or 0 without one.
func retryAfter(st *status.Status) int {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return max(1, int(math.Ceil(ri.GetRetryDelay().AsDuration().Seconds())))
		}
	}
	return 0
}

// statusWriter writes its own status code instead of the one given.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s statusWriter) WriteHeader(int) { s.ResponseWriter.WriteHeader(s.code) }
