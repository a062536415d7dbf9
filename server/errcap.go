package server

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/status"
)

// Error messages quote what the caller sent (an object ID, a relation, a
// schema line), and a request may carry megabytes: a message must not
// echo all of it. Every gRPC error (and so every REST error, which comes
// through the gRPC server) leaves with each quoted value shortened to
// maxQuoted bytes and the whole message to maxErrorMessage.
const (
	maxQuoted       = 128
	maxErrorMessage = 2048
)

// quoted matches a Go-quoted string (%q) or a backquoted one.
var quoted = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|`[^`]*`")

// capStatus returns err with its message capped as above; details are kept.
func capStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok || len(st.Message()) <= maxQuoted {
		return err
	}
	msg := capMessage(st.Message())
	if msg == st.Message() {
		return err
	}
	p := st.Proto()
	p.Message = msg
	return status.FromProto(p).Err()
}

// capMessage shortens each long quoted value in msg, then msg itself.
func capMessage(msg string) string {
	msg = quoted.ReplaceAllStringFunc(msg, func(q string) string {
		if len(q) <= maxQuoted {
			return q
		}
		head := truncateUTF8(q, maxQuoted-1)
		if trailing := len(head) - len(strings.TrimRight(head, "\\")); trailing%2 == 1 {
			head = head[:len(head)-1] // not half an escape
		}
		return fmt.Sprintf("%s%c... (%d bytes)", head, q[0], len(q)-2)
	})
	if len(msg) > maxErrorMessage {
		msg = truncateUTF8(msg, maxErrorMessage) + fmt.Sprintf("... (%d bytes in all)", len(msg))
	}
	return msg
}

// truncateUTF8 cuts s to at most n bytes, not inside a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.ToValidUTF8(s[:n], "")
}
