package image

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestProgressWriterLines: without a terminal, one line per step of a
// blob, byte counts within a step print nothing more.
func TestProgressWriterLines(t *testing.T) {
	var buf bytes.Buffer
	pw := NewProgressWriter(&buf, false)
	pw.Report(Event{ID: "aaaaaaaaaaaa", Status: StatusWaiting, Total: 3 << 20})
	pw.Report(Event{ID: "aaaaaaaaaaaa", Status: StatusDownloading, Total: 3 << 20})
	pw.Report(Event{ID: "aaaaaaaaaaaa", Status: StatusDownloading, Current: 1 << 20, Total: 3 << 20})
	pw.Report(Event{ID: "bbbbbbbbbbbb", Status: StatusExists})
	pw.Report(Event{ID: "aaaaaaaaaaaa", Status: StatusApplied})
	pw.Report(Event{ID: "cccccccccccc", Status: StatusFailed, Err: errors.New("boom")})
	pw.Close()
	want := "aaaaaaaaaaaa: waiting\naaaaaaaaaaaa: downloading 3.0 MiB\nbbbbbbbbbbbb: already exists\naaaaaaaaaaaa: applied\ncccccccccccc: failed: boom\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

// TestProgressWriterBars: on a terminal, bars name each blob and its
// step, and Close returns once they are drawn, finished or not.
func TestProgressWriterBars(t *testing.T) {
	var buf bytes.Buffer
	pw := NewProgressWriter(&buf, true)
	pw.Report(Event{ID: "aaaaaaaaaaaa", Status: StatusDownloading, Current: 10, Total: 100})
	pw.Report(Event{ID: "bbbbbbbbbbbb", Status: StatusDownloading, Total: 100})
	pw.Report(Event{ID: "aaaaaaaaaaaa", Status: StatusApplied, Current: 100, Total: 100})
	pw.Close()
	out := buf.String()
	for _, s := range []string{"aaaaaaaaaaaa", "bbbbbbbbbbbb", "applied"} {
		if !strings.Contains(out, s) {
			t.Errorf("bars do not show %q: %q", s, out)
		}
	}
}
