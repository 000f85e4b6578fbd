package image

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Status is the step a blob is at, in the words progress output shows.
type Status string

// The steps of pulls and pushes.
const (
	StatusWaiting     Status = "waiting"
	StatusDownloading Status = "downloading"
	StatusDownloaded  Status = "downloaded"
	StatusApplying    Status = "applying"
	StatusApplied     Status = "applied"
	StatusExists      Status = "already exists"
	StatusCompressing Status = "compressing"
	StatusPushing     Status = "pushing"
	StatusPushed      Status = "pushed"
	StatusMounted     Status = "mounted"
	StatusFailed      Status = "failed"
)

// done says whether s ends a blob's story.
func (s Status) done() bool {
	switch s {
	case StatusApplied, StatusExists, StatusPushed, StatusMounted, StatusFailed:
		return true
	}
	return false
}

// Event is one step (or a byte count within a step) of one blob.
type Event struct {
	// ID names the blob: the first 12 hex characters of its digest.
	ID string
	// Status is the step the blob is at.
	Status Status
	// Current and Total count bytes transferred, when known (Total 0 is
	// unknown).
	Current, Total int64
	// Err is why the blob failed (Status StatusFailed).
	Err error
}

// ProgressFunc receives events; it is called from several goroutines at
// once and must be quick.
type ProgressFunc func(Event)

// ProgressWriter shows events on a writer: a bar per blob (mpb) on a
// terminal, otherwise one plain line each time a blob changes step.
type ProgressWriter struct {
	w        io.Writer
	terminal bool

	mu    sync.Mutex
	last  map[string]Status
	bars  map[string]*progressBar
	p     *mpb.Progress
	order []string
}

type progressBar struct {
	bar    *mpb.Bar
	status atomic.Value // Status
}

// NewProgressWriter returns a ProgressWriter on w; terminal chooses bars
// over lines. Call Close before writing anything else to w.
func NewProgressWriter(w io.Writer, terminal bool) *ProgressWriter {
	pw := &ProgressWriter{w: w, terminal: terminal, last: map[string]Status{}, bars: map[string]*progressBar{}}
	if terminal {
		pw.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithAutoRefresh())
	}
	return pw
}

// Report shows e; it is a ProgressFunc.
func (pw *ProgressWriter) Report(e Event) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if pw.terminal {
		pw.bar(e)
		return
	}
	if pw.last[e.ID] == e.Status {
		return
	}
	pw.last[e.ID] = e.Status
	switch {
	case e.Err != nil:
		fmt.Fprintf(pw.w, "%s: %s: %v\n", e.ID, e.Status, e.Err)
	case e.Total > 0 && (e.Status == StatusDownloading || e.Status == StatusPushing):
		fmt.Fprintf(pw.w, "%s: %s %s\n", e.ID, e.Status, sizeString(e.Total))
	default:
		fmt.Fprintf(pw.w, "%s: %s\n", e.ID, e.Status)
	}
}

func (pw *ProgressWriter) bar(e Event) {
	b := pw.bars[e.ID]
	if b == nil {
		b = &progressBar{}
		b.status.Store(e.Status)
		b.bar = pw.p.AddBar(e.Total,
			mpb.PrependDecorators(
				decor.Name(e.ID+" ", decor.WC{W: 13, C: decor.DindentRight}),
				decor.Any(func(decor.Statistics) string { return string(b.status.Load().(Status)) }, decor.WC{W: 15, C: decor.DindentRight}),
			),
			mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f")),
		)
		pw.bars[e.ID] = b
		pw.order = append(pw.order, e.ID)
	}
	b.status.Store(e.Status)
	if e.Total > 0 {
		b.bar.SetTotal(e.Total, false)
	}
	if e.Current > 0 {
		b.bar.SetCurrent(e.Current)
	}
	switch {
	case e.Status == StatusFailed:
		b.bar.Abort(false)
	case e.Status.done():
		b.bar.SetTotal(-1, true)
	}
}

// Close stops the bars (a bar still running is left as it is) and waits
// until they are drawn for the last time.
func (pw *ProgressWriter) Close() {
	if pw.p == nil {
		return
	}
	pw.mu.Lock()
	for _, id := range pw.order {
		if b := pw.bars[id]; !b.bar.Completed() && !b.bar.Aborted() {
			b.bar.Abort(false)
		}
	}
	pw.mu.Unlock()
	pw.p.Wait()
}

// sizeString is n bytes in a short human form.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
