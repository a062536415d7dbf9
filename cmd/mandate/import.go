package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

type importOptions struct {
	conn       clientOptions
	batchSize  int
	skip       int64
	noProgress bool
}

// defaultImportBatch is the relationships per import message: large enough
// that round trips do not dominate, small enough (about 100 KB) to stay far
// under the server's message size and batch limits.
const defaultImportBatch = 1000

func newImportCommand() *cobra.Command {
	o := &importOptions{}
	cmd := &cobra.Command{
		Use:   "import FILE|-",
		Short: "Create relationships in bulk from a file (- for standard input)",
		Long: `Import creates the relationships in FILE through the server's ImportRelationships
stream, in batches of --batch-size, each written atomically.

FILE holds one relationship a line in validation-file text form (blank lines and lines
starting with // or # are skipped), as mandate export writes them:

  doc:readme#viewer@user:alice
  doc:budget#viewer@user:bob[within_limit:{"limit":100}][expiration:2030-01-01T00:00:00Z]

or is a validation YAML file (zed validate's format), whose relationships: block is
imported; its schema and assertions are not used (write the schema first with
mandate schema write).

Every relationship must be new: one that already exists fails its batch. A malformed
line stops the import before its batch is sent. Either way the error names the line,
nothing from the failing batch on is written, and the batches before it stay
committed, which the error also says.

On a terminal a progress bar shows the rate; the summary and the revision token of
the last batch go to standard output. --timeout does not bound an import.

An import that stops part way (a refused batch, a malformed line, Ctrl-C) says how
many relationships were committed and the command that resumes after them:

  resume with: mandate import --skip N FILE

--skip N passes over the input's first N relationships (comments and blank lines do
not count) and imports the rest. Ctrl-C stops sending, lets the server commit what it
received, and reports that. Only a lost connection leaves the count unknown; the
error says so.`,
		Example: "  mandate import rels.txt\n  mandate export | mandate import --endpoint other:50051 -\n  mandate import validation.yaml\n  mandate import --skip 20000 rels.txt",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImport(cmd, o, args[0])
		},
	}
	addClientFlags(cmd.Flags(), &o.conn)
	cmd.Flags().IntVar(&o.batchSize, "batch-size", defaultImportBatch, "relationships per batch (the server's limit is --max-bulk-relationships-batch)")
	cmd.Flags().Int64Var(&o.skip, "skip", 0, "pass over the input's first N relationships, as an interrupted import's resume line says")
	cmd.Flags().BoolVar(&o.noProgress, "no-progress", false, "never draw the progress bar, even on a terminal")
	return cmd
}

// relLine is one relationship's text and the line of the input it is on.
type relLine struct {
	line int
	text string
}

// importSource is the relationships of an import input.
type importSource struct {
	// name is how errors refer to the input.
	name string
	// lines yields the relationship lines in input order, or a read error.
	lines iter.Seq2[relLine, error]
	// total is the number of relationship lines, or -1 when not known in
	// advance (standard input).
	total int64
	// textual is set for line-per-relationship text input, where `tail -n
	// +N` resumes after a failure.
	textual bool
	close   func() error
}

// yamlKey matches the first meaningful line of a validation YAML file; a
// relationship line never has whitespace or nothing after its first colon.
var yamlKey = regexp.MustCompile(`^(---|(schema|schemaFile|relationships|assertions|validation)\s*:(\s|$))`)

// openImportSource opens FILE (or standard input for "-") and tells text
// from YAML by the name's extension or, failing that, the first meaningful
// line.
func openImportSource(cmd *cobra.Command, name string) (*importSource, error) {
	src := &importSource{name: name, total: -1, close: func() error { return nil }}
	var in io.Reader
	if name == "-" {
		src.name = "standard input"
		in = cmd.InOrStdin()
	} else {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("FILE argument: %w", err)
		}
		src.close = f.Close
		in = f
	}
	br := bufio.NewReaderSize(in, 1<<16)
	isYAML := strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")
	if !isYAML {
		head, err := br.Peek(1 << 16)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
			src.close()
			return nil, fmt.Errorf("reading %s: %w", src.name, err)
		}
		isYAML = looksLikeYAML(head)
	}
	if isYAML {
		data, err := io.ReadAll(br)
		src.close()
		src.close = func() error { return nil }
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", src.name, err)
		}
		rels, err := yamlRelationships(src.name, data)
		if err != nil {
			return nil, err
		}
		src.total = int64(len(rels))
		src.lines = func(yield func(relLine, error) bool) {
			for _, l := range rels {
				if !yield(l, nil) {
					return
				}
			}
		}
		return src, nil
	}
	src.textual = true
	if name != "-" {
		// Counting the lines of a file first costs a fast extra read and
		// gives the bar its length.
		if n, err := countRelationshipLines(name); err == nil {
			src.total = n
		}
	}
	src.lines = textLines(br)
	return src, nil
}

// looksLikeYAML reports whether the first meaningful line of head is a
// validation file's top-level key.
func looksLikeYAML(head []byte) bool {
	for _, line := range bytes.Split(head, []byte("\n")) {
		text := strings.TrimSpace(string(line))
		if skipLine(text) {
			continue
		}
		return yamlKey.MatchString(text)
	}
	return false
}

// skipLine reports whether a text-form line holds no relationship: blank or
// a comment.
func skipLine(text string) bool {
	return text == "" || strings.HasPrefix(text, "//") || strings.HasPrefix(text, "#")
}

// textLines yields the relationship lines of text-form input.
func textLines(r io.Reader) iter.Seq2[relLine, error] {
	return func(yield func(relLine, error) bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 4<<20)
		for line := 1; sc.Scan(); line++ {
			text := strings.TrimSpace(sc.Text())
			if skipLine(text) {
				continue
			}
			if !yield(relLine{line: line, text: text}, nil) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			yield(relLine{}, err)
		}
	}
}

func countRelationshipLines(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for _, err := range textLines(bufio.NewReaderSize(f, 1<<16)) {
		if err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

// yamlRelationships returns the relationship lines of a validation file's
// relationships: block with their file line numbers. A file of several
// documents may have relationships in only one, since each document is an
// independent schema.
func yamlRelationships(name string, data []byte) ([]relLine, error) {
	fileLines := strings.Split(string(data), "\n")
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var (
		out   []relLine
		found []int // line of each relationships: key
	)
	for doc := 0; ; doc++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: not a validation YAML file: %w", name, err)
		}
		root := &node
		if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
			root = root.Content[0]
		}
		if root.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(root.Content); i += 2 {
			k, v := root.Content[i], root.Content[i+1]
			if k.Value != "relationships" {
				continue
			}
			found = append(found, k.Line)
			if v.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("%s line %d: relationships: expected a block of relationships, one a line (relationships: |-)", name, v.Line)
			}
			out = append(out, blockLines(v, fileLines)...)
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("%s: a YAML file without a relationships: block; expected a validation file or one relationship a line", name)
	case len(found) > 1:
		return nil, fmt.Errorf("%s: relationships: blocks on lines %s, in separate documents with their own schemas; import one document at a time", name, joinInts(found))
	}
	return out, nil
}

// blockLines splits a relationships block into lines with their file line
// numbers. A literal block (|, |-) maps line for line; other styles are
// located by their text.
func blockLines(v *yaml.Node, fileLines []string) []relLine {
	var out []relLine
	next := v.Line // search position for non-literal styles
	for i, raw := range strings.Split(v.Value, "\n") {
		text := strings.TrimSpace(raw)
		if text == "" || strings.HasPrefix(text, "//") {
			continue
		}
		line := 0
		if v.Style&yaml.LiteralStyle != 0 {
			line = v.Line + 1 + i
		} else {
			for j := next - 1; j >= 0 && j < len(fileLines); j++ {
				if strings.Contains(fileLines[j], text) {
					line, next = j+1, j+1
					break
				}
			}
		}
		out = append(out, relLine{line: line, text: text})
	}
	return out
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// batchSpan is the input lines of one sent batch, for errors.
type batchSpan struct {
	first, last int
	lines       []int // line of each relationship; kept for recent batches only
}

// keepBatchLines is how many recent batches keep every line number, enough
// to cover what is in flight when the server refuses one.
const keepBatchLines = 64

// parsedBatch is one batch ready to send, or the end of the input: err
// is a read or parse error, and rels and lines then hold the batch's good
// relationships before it, which are not sent.
type parsedBatch struct {
	rels  []*pb.Relationship
	lines []int
	err   error
}

// parseBatches reads and parses the input in its own goroutine, so that
// parsing overlaps sending and the server's writing. It stops at the first
// error or when done is closed.
func parseBatches(src *importSource, size int, skip int64, done <-chan struct{}) <-chan parsedBatch {
	out := make(chan parsedBatch, 4)
	go func() {
		defer close(out)
		b := parsedBatch{rels: make([]*pb.Relationship, 0, size), lines: make([]int, 0, size)}
		emit := func() bool {
			select {
			case out <- b:
				b = parsedBatch{rels: make([]*pb.Relationship, 0, size), lines: make([]int, 0, size)}
				return true
			case <-done:
				return false
			}
		}
		for l, err := range src.lines {
			if err != nil {
				b.err = fmt.Errorf("reading %s: %w", src.name, err)
				emit()
				return
			}
			if skip > 0 {
				skip--
				continue
			}
			r, err := relationshipProto(l.text)
			if err != nil {
				b.err = fmt.Errorf("%s: %w", src.lineName(l.line), err)
				emit()
				return
			}
			b.rels = append(b.rels, r)
			b.lines = append(b.lines, l.line)
			if len(b.rels) == size && !emit() {
				return
			}
		}
		if len(b.rels) > 0 {
			emit()
		}
	}()
	return out
}

func runImport(cmd *cobra.Command, o *importOptions, name string) error {
	if o.batchSize <= 0 {
		return fmt.Errorf("--batch-size %d: expected a positive number of relationships", o.batchSize)
	}
	if o.skip < 0 {
		return fmt.Errorf("--skip %d: expected a number of relationships, 0 or more", o.skip)
	}
	src, err := openImportSource(cmd, name)
	if err != nil {
		return err
	}
	defer src.close()
	c, _, cancel, err := connect(cmd, &o.conn)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.close()
	// An import lasts as long as its data: no --timeout. An interruption
	// stops the sending, not the stream, so that the server commits and
	// reports what it received.
	interrupted := cmd.Context().Done()
	streamCtx, endStream := context.WithCancel(context.WithoutCancel(cmd.Context()))
	defer endStream()
	stream, err := c.rels.ImportRelationships(streamCtx)
	if err != nil {
		return c.callError("import", err)
	}
	total := src.total
	if total >= 0 {
		total = max(0, total-o.skip)
	}
	prog := newProgress(cmd.ErrOrStderr(), !o.noProgress && isTerminal(cmd.ErrOrStderr()), total, "importing")
	// resume is the line that takes up the import after its first n
	// relationships (counting those skipped by --skip).
	resume := func(committed int64) string {
		return fmt.Sprintf("resume with: mandate import --skip %d %s", o.skip+committed, name)
	}
	defer prog.done(false)
	done := make(chan struct{})
	defer close(done)

	var sent []batchSpan
	// serverFailed reports an error from the server, naming the lines of the
	// batch it refused.
	serverFailed := func(raw error) error {
		prog.done(false)
		err := importServerError(c.callError("import", raw), raw, src.name, sent)
		if m := committedRef.FindStringSubmatch(status.Convert(raw).Message()); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			return fmt.Errorf("%w\n%s", err, resume(n))
		}
		switch status.Code(raw) {
		case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.Unknown:
			if len(sent) > 0 {
				return fmt.Errorf("%w\nthe stream ended after %d batches were sent: each batch the server received was committed whole, but how many it received is not known (mandate export shows what is there)", err, len(sent))
			}
		}
		return err
	}
	batches := parseBatches(src, o.batchSize, o.skip, done)
	for {
		var b parsedBatch
		var more bool
		select {
		case b, more = <-batches:
		case <-interrupted:
			// Ctrl-C: send nothing more; the server commits what it has.
			interrupted = nil
			ctx, cancel := context.WithTimeout(streamCtx, 30*time.Second)
			go func() { <-ctx.Done(); endStream() }()
			resp, err := stream.CloseAndRecv()
			cancel()
			prog.done(false)
			if err != nil {
				return serverFailed(err)
			}
			return fmt.Errorf("interrupted: %d relationships were committed at revision %s\n%s",
				resp.GetNumLoaded(), resp.GetWrittenAt().GetToken(), resume(int64(resp.GetNumLoaded())))
		}
		if !more {
			break
		}
		if b.err != nil {
			// Stop before this batch: close the stream so the server commits
			// what was sent, then say what stays written.
			resp, err := stream.CloseAndRecv()
			if err != nil {
				return serverFailed(err)
			}
			prog.done(false)
			first := batchFirst(b.lines, sent)
			msg := fmt.Sprintf("%v\nnothing from %s on was written", b.err, src.lineName(first))
			n := resp.GetNumLoaded()
			if n > 0 {
				msg += fmt.Sprintf("; the %d relationships before it were committed at revision %s", n, resp.GetWrittenAt().GetToken())
				if src.textual && name != "-" {
					msg += fmt.Sprintf(" (or: tail -n +%d %s | mandate import -)", first, name)
				}
			}
			return fmt.Errorf("%s\nafter fixing it, %s", msg, resume(int64(n)))
		}
		if err := stream.Send(&pb.ImportRelationshipsRequest{Relationships: b.rels}); err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream; its status says why.
				_, err = stream.CloseAndRecv()
			}
			return serverFailed(err)
		}
		sent = append(sent, batchSpan{first: b.lines[0], last: b.lines[len(b.lines)-1], lines: b.lines})
		if k := len(sent) - 1 - keepBatchLines; k >= 0 {
			sent[k].lines = nil
		}
		prog.add(len(b.rels))
	}
	if len(sent) == 0 {
		stream.CloseSend()
		return fmt.Errorf("%s holds no relationships", src.name)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return serverFailed(err)
	}
	prog.done(true)
	prog.n = int64(resp.GetNumLoaded())
	fmt.Fprintf(cmd.OutOrStdout(), "%s\nrevision: %s\n", prog.summary("imported"), resp.GetWrittenAt().GetToken())
	return nil
}

// lineName names a line of the input for errors.
func (s *importSource) lineName(line int) string {
	if line <= 0 {
		return s.name
	}
	return fmt.Sprintf("%s line %d", s.name, line)
}

// batchFirst is the first line of the batch being built, or the line after
// the last batch sent when it is still empty.
func batchFirst(lines []int, sent []batchSpan) int {
	if len(lines) > 0 {
		return lines[0]
	}
	if len(sent) > 0 {
		return sent[len(sent)-1].last + 1
	}
	return 1
}

// Server messages name the batch (counted from 0, one per message) and the
// relationship within it that failed, and how many were committed before.
var (
	batchRef     = regexp.MustCompile(`batch (\d+)`)
	itemRef      = regexp.MustCompile(`relationships\[(\d+)\]|mutation (\d+)`)
	committedRef = regexp.MustCompile(`(\d+) relationships from \d+ earlier batches were committed`)
)

// importServerError adds to a server's refusal the input lines it is about.
func importServerError(base, raw error, name string, sent []batchSpan) error {
	msg := status.Convert(raw).Message()
	m := batchRef.FindStringSubmatch(msg)
	if m == nil {
		return base
	}
	b, err := strconv.Atoi(m[1])
	if err != nil || b < 0 || b >= len(sent) {
		return base
	}
	span := sent[b]
	where := fmt.Sprintf("batch %d is lines %d-%d of %s", b, span.first, span.last, name)
	if im := itemRef.FindStringSubmatch(msg); im != nil && span.lines != nil {
		idx := im[1] + im[2]
		if i, err := strconv.Atoi(idx); err == nil && i >= 0 && i < len(span.lines) {
			where = fmt.Sprintf("the failing relationship is on line %d of %s (batch %d, lines %d-%d)", span.lines[i], name, b, span.first, span.last)
		}
	}
	return fmt.Errorf("%w\n%s; nothing from that batch on was written", base, where)
}
