package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/spf13/cobra"
)

// listFlags are the output flags of a verb that lists things.
type listFlags struct {
	format  string
	noTrunc bool
	// entry is a zero entry of a list verb (its JSON type), for which
	// --format may also be a Go template; nil for other verbs.
	entry any
	tmpl  *template.Template // --format as a template, once checked
}

// add registers --format. The format is checked before the verb runs
// (and opens the store): a bad one is a usage error.
func (l *listFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&l.format, "format", "table", "output `FORMAT`: table or json")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		_, err := l.json()
		return err
	}
}

// addList registers the flags of a verb that lists entries like entry
// (its JSON type): --format, which may also be a Go template run for each
// entry over its fields (docker's and podman's `--format '{{.ID}}'`), and
// --no-trunc.
func (l *listFlags) addList(cmd *cobra.Command, entry any) {
	l.entry = entry
	l.add(cmd)
	cmd.Flags().Lookup("format").Usage = "output `FORMAT`: table, json, or a Go template run for each entry over its JSON fields by Go name (" + fieldNames(entry) + ")"
	cmd.Flags().BoolVar(&l.noTrunc, "no-trunc", false, "print IDs and digests in full")
}

// acceptAll registers -a/--all on a list verb whose docker namesake hides
// entries without it (stopped containers, intermediate images). Here
// every entry is always listed, so the flag changes nothing; it is
// accepted so that the habit does not end in a usage error.
func acceptAll(cmd *cobra.Command, what string) {
	cmd.Flags().BoolP("all", "a", false, "accepted for docker's habit: every "+what+" is always listed")
}

// json reports whether JSON was asked for. Anything but table, json or,
// on a list verb, a Go template that runs on an empty entry is a usage
// error.
func (l *listFlags) json() (bool, error) {
	switch l.format {
	case "table", "":
		return false, nil
	case "json":
		return true, nil
	}
	if l.entry == nil || !strings.Contains(l.format, "{{") {
		want := "table or json"
		if l.entry != nil {
			want = "table, json or a Go template such as '{{.ID}}'"
		}
		return false, usagef("--format %q: want %s", l.format, want)
	}
	if l.tmpl == nil {
		t, err := parseTemplate(l.format)
		if err == nil {
			// An unknown field fails here, once, not half-way through
			// the list.
			err = t.Execute(io.Discard, l.entry)
		}
		if err != nil {
			return false, usagef("--format %q: %v (fields: %s)", l.format, err, fieldNames(l.entry))
		}
		l.tmpl = t
	}
	return false, nil
}

// templateFuncs are the functions of docker's --format templates that
// apply here: {{json .}}, {{join .Names ","}}, {{upper .Kind}}.
var templateFuncs = template.FuncMap{
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	"join":  strings.Join,
	"upper": strings.ToUpper,
	"lower": strings.ToLower,
}

// parseTemplate parses a --format template, with templateFuncs.
func parseTemplate(format string) (*template.Template, error) {
	return template.New("format").Funcs(templateFuncs).Parse(format)
}

// printEntries prints entries as JSON, or with the --format template once
// each, a line each.
func printEntries[T any](w io.Writer, l *listFlags, entries []T) error {
	if l.tmpl == nil {
		return writeJSON(w, entries)
	}
	bw := bufio.NewWriter(w)
	for _, e := range entries {
		if err := l.tmpl.Execute(bw, e); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// fieldNames lists the exported fields of struct v, for --format's help.
func fieldNames(v any) string {
	t := reflect.TypeOf(v)
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		if f := t.Field(i); f.IsExported() {
			names = append(names, "."+f.Name)
		}
	}
	return strings.Join(names, " ")
}

// id shortens a 64-hex ID (or "sha256:" digest) to 12 characters, as
// docker does in tables, unless --no-trunc.
func (l *listFlags) id(s string) string {
	if l.noTrunc {
		return s
	}
	return shortID(s)
}

func shortID(s string) string {
	if rest, ok := strings.CutPrefix(s, "sha256:"); ok {
		s = rest
	}
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// writeJSON prints v indented, with a final newline. Slices must be
// non-nil so that an empty list prints [] and not null.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// table writes aligned columns: a header, then rows.
type table struct {
	w   io.Writer
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{w: w}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 8, 3, ' ', 0)
	t.row(header...)
	return t
}

func (t *table) row(cols ...string) {
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

// flush writes the table, without the padding an empty last column
// leaves at the end of a line.
func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	var out strings.Builder
	for _, line := range strings.SplitAfter(t.buf.String(), "\n") {
		if trimmed, ok := strings.CutSuffix(line, "\n"); ok {
			out.WriteString(strings.TrimRight(trimmed, " ") + "\n")
		} else {
			out.WriteString(line)
		}
	}
	_, err := io.WriteString(t.w, out.String())
	return err
}

// humanSize formats bytes in decimal units, as docker does.
func humanSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	units := []string{"kB", "MB", "GB", "TB", "PB", "EB"}
	f := float64(n) / unit
	i := 0
	for f >= unit && i < len(units)-1 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.3g%s", f, units[i])
}

// ago formats the time since t for people ("3 minutes ago").
func ago(t time.Time, now time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	plural := func(n int, unit string) string {
		if n == 1 {
			return fmt.Sprintf("1 %s ago", unit)
		}
		return fmt.Sprintf("%d %ss ago", n, unit)
	}
	switch {
	case d < time.Second:
		return "Less than a second ago"
	case d < time.Minute:
		return plural(int(d/time.Second), "second")
	case d < time.Hour:
		return plural(int(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour")
	case d < 14*24*time.Hour:
		return plural(int(d/(24*time.Hour)), "day")
	case d < 60*24*time.Hour:
		return plural(int(d/(7*24*time.Hour)), "week")
	case d < 2*365*24*time.Hour:
		return plural(int(d/(30*24*time.Hour)), "month")
	}
	return plural(int(d/(365*24*time.Hour)), "year")
}

// quotePath quotes a path the way git does (core.quotePath=false): a path
// with a control character, a backslash or a double quote is printed in
// double quotes with C escapes; any other path, UTF-8 included, as is. So
// one change is always one line, and a script can tell a quoted name from
// a name that starts with a quote.
func quotePath(p string) string {
	needs := false
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f || c == '\\' || c == '"' {
			needs = true
			break
		}
	}
	if !needs {
		return p
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '\a':
			b.WriteString(`\a`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\v':
			b.WriteString(`\v`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		default:
			if c < 0x20 || c == 0x7f {
				fmt.Fprintf(&b, `\%03o`, c)
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
